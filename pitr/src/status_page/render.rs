//! The status page as HTML: a headline ("you can recover to any moment between X and Y"), the
//! timeline picture as inline SVG, and the alerts, last verification and drills beside it.
//! Pure: the same [`StatusPage`] always gives the same page. Every string that comes from the
//! repository or the log goes through [`escape`].

use std::collections::BTreeSet;
use std::fmt::Write as _;

use chrono::{DateTime, TimeDelta, Utc};

use super::{BackupMark, GapSpan, StatusPage};
use crate::backup::Tier;
use crate::drill::DrillRecord;
use crate::info::Window;
use crate::restore_point::RestorePoint;
use crate::verify::{human_duration, Severity};
use crate::wal::TimelineId;

/// The picture's width in SVG units (it scales to the page).
const WIDTH: f64 = 1000.0;
/// Where the time axis starts: the row labels are left of it.
const AXIS_LEFT: f64 = 100.0;
/// Room right of the axis.
const AXIS_RIGHT: f64 = 44.0;
/// Room above the first row, for the "now" label.
const TOP: f64 = 24.0;
/// The height of one timeline's row.
const ROW: f64 = 72.0;
/// Where the bar lies in its row, and its height.
const BAR_Y: f64 = 34.0;
const BAR: f64 = 20.0;
/// The height of the drills' row.
const DRILL_ROW: f64 = 44.0;
/// Room below the rows for the time axis.
const AXIS_HEIGHT: f64 = 40.0;
/// The most ticks on the time axis.
const MAX_TICKS: i64 = 8;
/// The steps between ticks, in seconds: round ones, from a second to a day.
const TICK_STEPS: [i64; 17] = [
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
];
/// The narrowest a window or gap is drawn, so that a short one stays visible.
const MIN_SPAN: f64 = 4.0;
/// The longest restore point label drawn (the whole name is in its tooltip).
const LABEL_CHARS: usize = 28;

/// The page refreshes itself this often, in seconds.
const REFRESH_SECONDS: u32 = 60;

/// The colours of the tiers' markers.
fn tier_colour(tier: Tier) -> &'static str {
    match tier {
        Tier::Hourly => "#1f6fb2",
        Tier::Daily => "#7b3fa8",
        Tier::Weekly => "#d9730d",
    }
}

/// The whole page.
pub fn render(page: &StatusPage) -> String {
    let mut html = String::with_capacity(32 * 1024);
    let title = format!("pitr status: {}", page.repository);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n\
         <header><h1>pitr status</h1><p class=\"meta\">repository <code>{}</code> · as of {} · refreshes every {REFRESH_SECONDS} s</p></header>\n",
        escape(&title),
        escape(&page.repository),
        stamp(page.now),
    );
    headline(&mut html, page);
    html.push_str("<div class=\"columns\"><main>\n<figure>");
    html.push_str(&picture(page));
    html.push_str(LEGEND);
    html.push_str("</figure>\n");
    windows_table(&mut html, &page.windows);
    backups_table(&mut html, page);
    restore_points_table(&mut html, &page.restore_points);
    html.push_str("</main>\n<aside>\n");
    alerts(&mut html, page);
    last_verify(&mut html, page.last_verify.as_deref());
    last_drills(&mut html, &page.drills);
    unreadable(&mut html, &page.unreadable);
    html.push_str("</aside></div>\n</body></html>\n");
    html
}

/// The answer first: the newest window, coloured by the worst alert.
fn headline(html: &mut String, page: &StatusPage) {
    let class = match page.alerts.iter().map(|a| a.severity).max() {
        None => "ok",
        Some(Severity::Warning) => "warning",
        Some(Severity::Critical) => "critical",
    };
    let _ = write!(html, "<section id=\"headline\" class=\"{class}\">");
    match page.windows.iter().max_by_key(|w| (w.end_time, w.timeline)) {
        Some(w) => {
            let _ = write!(
                html,
                "<p class=\"big\">You can recover to any moment between <strong>{}</strong> and <strong>{}</strong> \
                 <span class=\"tl\">on timeline {}</span></p>",
                stamp(w.start_time),
                stamp(w.end_time),
                w.timeline
            );
            let others = page.windows.len() - 1;
            if others > 0 {
                let _ = write!(
                    html,
                    "<p>and within {others} other window{} below.</p>",
                    if others == 1 { "" } else { "s" }
                );
            }
        }
        None if !page.unreadable.is_empty() => {
            html.push_str("<p class=\"big\">No recoverable window could be read: see what is unreadable.</p>")
        }
        None => html.push_str("<p class=\"big\">Nothing is recoverable yet: no backup with the WAL it needs.</p>"),
    }
    let verdict = match class {
        "ok" => "No alert.".to_string(),
        _ => format!(
            "{} alert{} — see the list.",
            page.alerts.len(),
            if page.alerts.len() == 1 { "" } else { "s" }
        ),
    };
    let _ = writeln!(html, "<p class=\"verdict\">{verdict}</p></section>");
}

/// Maps time to x on the picture's axis.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scale {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl Scale {
    /// From a little before the earliest moment shown to a little after the latest (`now` at
    /// least); a minute wide at the least, reaching back from the latest.
    fn covering(times: impl IntoIterator<Item = DateTime<Utc>>, now: DateTime<Utc>) -> Scale {
        let (mut start, mut end) = (now, now);
        for t in times {
            start = start.min(t);
            end = end.max(t);
        }
        let span = (end - start).max(TimeDelta::minutes(1));
        let pad = span / 40;
        Scale {
            start: end - span - pad,
            end: end + pad,
        }
    }

    fn width() -> f64 {
        WIDTH - AXIS_LEFT - AXIS_RIGHT
    }

    /// Where `t` lies: proportional to its time between the scale's start and end.
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start).num_milliseconds() as f64;
        let offset = (t - self.start).num_milliseconds() as f64;
        AXIS_LEFT + Scale::width() * offset / total
    }

    /// The round step between ticks, in seconds, that gives at most [`MAX_TICKS`] (whole days
    /// beyond a day).
    fn tick_step(&self) -> i64 {
        let span = (self.end - self.start).num_seconds().max(1);
        TICK_STEPS
            .into_iter()
            .find(|step| span / step <= MAX_TICKS)
            .unwrap_or_else(|| (span / MAX_TICKS / 86400 + 1) * 86400)
    }

    /// The moments on the scale that are whole multiples of `step` seconds (since the Unix
    /// epoch, so days start at midnight UTC).
    fn ticks(&self, step: i64) -> Vec<DateTime<Utc>> {
        let first = self.start.timestamp().div_euclid(step) * step + step;
        (0..)
            .map(|n| first + n * step)
            .take_while(|seconds| *seconds <= self.end.timestamp())
            .filter_map(|seconds| DateTime::from_timestamp(seconds, 0))
            .collect()
    }

    /// The x and width of the span from `from` to `to`, at least `min` wide (widened around
    /// its middle).
    fn span(&self, from: DateTime<Utc>, to: DateTime<Utc>, min: f64) -> (f64, f64) {
        let (left, right) = (self.x(from), self.x(to.max(from)));
        let width = right - left;
        if width >= min {
            (left, width)
        } else {
            ((left + right - min) / 2.0, min)
        }
    }
}

/// Every moment the picture shows.
fn moments(page: &StatusPage) -> Vec<DateTime<Utc>> {
    let windows = page.windows.iter().flat_map(|w| [w.start_time, w.end_time]);
    let backups = page.backups.iter().map(|b| b.stop_time);
    let points = page.restore_points.iter().map(|p| p.time);
    let gaps = page.gaps.iter().flat_map(|g| [g.from, g.to]);
    let drills = page.drills.iter().map(drill_time);
    windows.chain(backups).chain(points).chain(gaps).chain(drills).collect()
}

/// Where a drill is drawn: at the newest moment it proved recoverable (else when it ran).
fn drill_time(d: &DrillRecord) -> DateTime<Utc> {
    d.recoverable_until.unwrap_or(d.started)
}

/// The timelines with a row: every one something is shown on.
fn timelines(page: &StatusPage) -> Vec<TimelineId> {
    let rows: BTreeSet<TimelineId> = page
        .windows
        .iter()
        .map(|w| w.timeline)
        .chain(page.backups.iter().map(|b| b.timeline))
        .chain(page.restore_points.iter().map(|p| p.timeline))
        .chain(page.gaps.iter().map(|g| g.gap.timeline))
        .collect();
    rows.into_iter().collect()
}

/// The timeline picture.
fn picture(page: &StatusPage) -> String {
    let scale = Scale::covering(moments(page), page.now);
    let rows = timelines(page);
    let drills_height = if page.drills.is_empty() { 0.0 } else { DRILL_ROW };
    let rows_bottom = TOP + ROW * rows.len().max(1) as f64 + drills_height;
    let height = rows_bottom + AXIS_HEIGHT;
    let mut svg = String::with_capacity(16 * 1024);
    let _ = write!(
        svg,
        "<svg id=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" \
         role=\"img\" aria-label=\"recoverable window per timeline\">"
    );
    if rows.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{AXIS_LEFT}\" y=\"{}\" class=\"empty\">Nothing archived yet.</text>",
            TOP + ROW / 2.0
        );
    }
    for (index, timeline) in rows.iter().enumerate() {
        timeline_row(&mut svg, page, &scale, *timeline, TOP + ROW * index as f64);
    }
    if !page.drills.is_empty() {
        drill_row(&mut svg, page, &scale, TOP + ROW * rows.len() as f64);
    }
    now_line(&mut svg, &scale, page.now, rows_bottom);
    axis(&mut svg, &scale, rows_bottom);
    svg.push_str("</svg>");
    svg
}

fn timeline_row(svg: &mut String, page: &StatusPage, scale: &Scale, timeline: TimelineId, top: f64) {
    let bar = top + BAR_Y;
    let _ = write!(
        svg,
        "<g class=\"timeline-row\" data-timeline=\"{timeline}\">\
         <text class=\"row-label\" x=\"8\" y=\"{:.1}\">timeline {timeline}</text>\
         <rect class=\"track\" x=\"{AXIS_LEFT}\" y=\"{bar:.1}\" width=\"{:.1}\" height=\"{BAR}\" rx=\"3\"/>",
        bar + BAR / 2.0 + 5.0,
        Scale::width()
    );
    for w in page.windows.iter().filter(|w| w.timeline == timeline) {
        window_rect(svg, scale, w, bar);
    }
    for g in page.gaps.iter().filter(|g| g.gap.timeline == timeline) {
        gap_rect(svg, scale, g, bar);
    }
    let points = page.restore_points.iter().filter(|p| p.timeline == timeline);
    for (index, p) in points.enumerate() {
        restore_point(svg, scale, p, top, index);
    }
    for b in page.backups.iter().filter(|b| b.timeline == timeline) {
        backup_marker(svg, scale, b, bar + BAR / 2.0);
    }
    svg.push_str("</g>");
}

fn window_rect(svg: &mut String, scale: &Scale, w: &Window, bar: f64) {
    let (x, width) = scale.span(w.start_time, w.end_time, MIN_SPAN);
    let _ = write!(
        svg,
        "<rect class=\"window\" x=\"{x:.1}\" y=\"{bar:.1}\" width=\"{width:.1}\" height=\"{BAR}\" rx=\"3\">\
         <title>recoverable from {} to {} (from backup {}, WAL up to {})</title></rect>",
        stamp(w.start_time),
        stamp(w.end_time),
        escape(&w.from_backup),
        escape(&w.end_wal),
    );
}

fn gap_rect(svg: &mut String, scale: &Scale, g: &GapSpan, bar: f64) {
    let (x, width) = scale.span(g.from, g.to, MIN_SPAN);
    let missing = if g.gap.segments == 1 {
        format!("segment {} is missing", g.gap.first)
    } else {
        format!(
            "{} segments {}..{} are missing",
            g.gap.segments, g.gap.first, g.gap.last
        )
    };
    let _ = write!(
        svg,
        "<rect class=\"gap\" data-first=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{width:.1}\" height=\"{:.1}\">\
         <title>WAL gap: {}</title></rect>",
        escape(&g.gap.first),
        bar - 5.0,
        BAR + 10.0,
        escape(&missing),
    );
}

fn restore_point(svg: &mut String, scale: &Scale, p: &RestorePoint, top: f64, index: usize) {
    let x = scale.x(p.time);
    let label_y = top + 12.0 + 10.0 * (index % 2) as f64;
    // Right of the flag, or left of the pole in the right third, so that it stays in the picture.
    let (label_x, anchor) = if x > AXIS_LEFT + Scale::width() * 2.0 / 3.0 {
        (x - 3.0, "end")
    } else {
        (x + 3.0, "start")
    };
    let short: String = if p.name.chars().count() > LABEL_CHARS {
        p.name.chars().take(LABEL_CHARS - 1).chain(['…']).collect()
    } else {
        p.name.clone()
    };
    let _ = write!(
        svg,
        "<g class=\"restore-point\" data-name=\"{}\"><title>restore point {} at {} (LSN {})</title>\
         <line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/>\
         <polygon points=\"{x:.1},{:.1} {:.1},{:.1} {x:.1},{:.1}\"/>\
         <text x=\"{label_x:.1}\" y=\"{label_y:.1}\" text-anchor=\"{anchor}\">{}</text></g>",
        escape(&p.name),
        escape(&p.name),
        stamp(p.time),
        p.lsn,
        label_y - 9.0,
        top + BAR_Y + BAR + 4.0,
        label_y - 9.0,
        x + 7.0,
        label_y - 6.0,
        label_y - 3.0,
        escape(&short),
    );
}

fn backup_marker(svg: &mut String, scale: &Scale, b: &BackupMark, y: f64) {
    let x = scale.x(b.stop_time);
    let colour = tier_colour(b.tier);
    let shape = tier_shape(b.tier, x, y, 7.0, colour);
    let _ = write!(
        svg,
        "<g class=\"backup backup-{tier}\" data-tier=\"{tier}\" data-id=\"{}\">\
         <title>{tier} backup {} consistent at {}</title>{shape}</g>",
        escape(&b.id),
        escape(&b.id),
        stamp(b.stop_time),
        tier = b.tier,
    );
}

/// Hourly a circle, daily a square, weekly a diamond: told apart without colour too.
fn tier_shape(tier: Tier, x: f64, y: f64, r: f64, colour: &str) -> String {
    match tier {
        Tier::Hourly => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\" fill=\"{colour}\"/>"),
        Tier::Daily => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\"/>",
            x - r,
            y - r,
            2.0 * r,
            2.0 * r
        ),
        Tier::Weekly => {
            let d = r * 1.3;
            format!(
                "<polygon points=\"{x:.1},{:.1} {:.1},{y:.1} {x:.1},{:.1} {:.1},{y:.1}\" fill=\"{colour}\"/>",
                y - d,
                x + d,
                y + d,
                x - d
            )
        }
    }
}

fn drill_row(svg: &mut String, page: &StatusPage, scale: &Scale, top: f64) {
    let y = top + DRILL_ROW / 2.0;
    let _ = write!(
        svg,
        "<g class=\"drill-row\"><text class=\"row-label\" x=\"8\" y=\"{:.1}\">drills</text>",
        y + 5.0
    );
    for d in &page.drills {
        let x = scale.x(drill_time(d));
        let from = page
            .backups
            .iter()
            .find(|b| b.id == d.backup_id)
            .map(|b| scale.x(b.stop_time));
        let (verdict, mark) = if d.passed { ("passed", "✓") } else { ("failed", "✗") };
        let _ = write!(
            svg,
            "<g class=\"drill drill-{verdict}\" data-tier=\"{}\"><title>{} drill of backup {} started {}: {verdict}{}</title>",
            d.tier,
            d.tier,
            escape(&d.backup_id),
            stamp(d.started),
            if d.passed { String::new() } else { format!(" ({})", escape(&d.failures())) },
        );
        if let Some(from) = from.filter(|from| *from < x) {
            let _ = write!(
                svg,
                "<line x1=\"{from:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{y:.1}\"/>"
            );
        }
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"8\"/><text x=\"{x:.1}\" y=\"{:.1}\">{mark}</text></g>",
            y + 4.5
        );
    }
    svg.push_str("</g>");
}

fn now_line(svg: &mut String, scale: &Scale, now: DateTime<Utc>, bottom: f64) {
    let x = scale.x(now);
    let _ = write!(
        svg,
        "<g class=\"now\"><line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\"/>\
         <text x=\"{x:.1}\" y=\"{:.1}\">now</text></g>",
        TOP - 6.0,
        TOP - 9.0
    );
}

fn axis(svg: &mut String, scale: &Scale, top: f64) {
    let y = top + 6.0;
    let _ = write!(
        svg,
        "<g class=\"axis\"><line x1=\"{AXIS_LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>",
        AXIS_LEFT + Scale::width()
    );
    let step = scale.tick_step();
    let format = if step >= 86400 {
        "%m-%d"
    } else if scale.end - scale.start > TimeDelta::days(1) {
        "%m-%d %H:%M"
    } else if step >= 60 {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    for t in scale.ticks(step) {
        let x = scale.x(t);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"/><text x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
            y + 5.0,
            y + 20.0,
            t.format(format)
        );
    }
    let _ = write!(svg, "<text class=\"unit\" x=\"8\" y=\"{:.1}\">UTC</text></g>", y + 20.0);
}

/// The legend under the picture, with the picture's own shapes.
const LEGEND: &str = "<figcaption class=\"legend\">\
<span><svg viewBox=\"0 0 24 14\"><rect class=\"window\" x=\"0\" y=\"2\" width=\"24\" height=\"10\" rx=\"2\"/></svg>recoverable window</span>\
<span><svg viewBox=\"0 0 24 14\"><rect class=\"gap\" x=\"7\" y=\"0\" width=\"10\" height=\"14\"/></svg>WAL gap</span>\
<span><svg viewBox=\"0 0 16 16\"><circle cx=\"8\" cy=\"8\" r=\"6\" fill=\"#1f6fb2\"/></svg>hourly backup</span>\
<span><svg viewBox=\"0 0 16 16\"><rect x=\"2\" y=\"2\" width=\"12\" height=\"12\" fill=\"#7b3fa8\"/></svg>daily backup</span>\
<span><svg viewBox=\"0 0 16 16\"><polygon points=\"8,0 16,8 8,16 0,8\" fill=\"#d9730d\"/></svg>weekly backup</span>\
<span><svg viewBox=\"0 0 16 16\"><g class=\"restore-point\"><line x1=\"4\" y1=\"1\" x2=\"4\" y2=\"16\"/><polygon points=\"4,1 11,4 4,7\"/></g></svg>restore point</span>\
<span><svg viewBox=\"0 0 18 18\"><g class=\"drill drill-passed\"><circle cx=\"9\" cy=\"9\" r=\"8\"/><text x=\"9\" y=\"13.5\">✓</text></g></svg>drill passed</span>\
<span><svg viewBox=\"0 0 18 18\"><g class=\"drill drill-failed\"><circle cx=\"9\" cy=\"9\" r=\"8\"/><text x=\"9\" y=\"13.5\">✗</text></g></svg>drill failed</span>\
</figcaption>";

fn windows_table(html: &mut String, windows: &[Window]) {
    html.push_str("<h2>Recoverable windows</h2>");
    if windows.is_empty() {
        html.push_str("<p class=\"none\">None: no backup with the WAL it needs.</p>");
        return;
    }
    html.push_str(
        "<table id=\"windows\"><tr><th>timeline</th><th>from</th><th>to</th><th>starting from backup</th><th>WAL up to</th></tr>",
    );
    for w in windows {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            w.timeline,
            stamp(w.start_time),
            stamp(w.end_time),
            escape(&w.from_backup),
            escape(&w.end_wal)
        );
    }
    html.push_str("</table>\n");
}

fn backups_table(html: &mut String, page: &StatusPage) {
    html.push_str(
        "<h2>Backups</h2><table id=\"backups\"><tr><th>tier</th><th>backups</th><th>newest</th><th>age</th></tr>",
    );
    for tier in Tier::ALL {
        let of_tier: Vec<&BackupMark> = page.backups.iter().filter(|b| b.tier == tier).collect();
        let newest = of_tier.last().map_or_else(
            || ("—".to_string(), "—".to_string()),
            |b| {
                (
                    format!("<code>{}</code> at {}", escape(&b.id), stamp(b.stop_time)),
                    human_duration((page.now - b.stop_time).num_seconds()),
                )
            },
        );
        let _ = write!(
            html,
            "<tr><td>{}{tier}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            legend_icon(tier),
            of_tier.len(),
            newest.0,
            newest.1
        );
    }
    html.push_str("</table>\n");
}

/// The tier's marker, small, for the tables.
fn legend_icon(tier: Tier) -> String {
    format!(
        "<svg class=\"icon\" viewBox=\"0 0 16 16\">{}</svg>",
        tier_shape(tier, 8.0, 8.0, 6.0, tier_colour(tier))
    )
}

fn restore_points_table(html: &mut String, points: &[RestorePoint]) {
    if points.is_empty() {
        return;
    }
    html.push_str("<h2>Restore points</h2><table id=\"restore-points\"><tr><th>name</th><th>time</th><th>timeline</th><th>LSN</th></tr>");
    for p in points {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.name),
            stamp(p.time),
            p.timeline,
            p.lsn
        );
    }
    html.push_str("</table>\n");
}

fn alerts(html: &mut String, page: &StatusPage) {
    html.push_str("<h2>Current alerts</h2>");
    if page.alerts.is_empty() {
        html.push_str("<p class=\"none\" id=\"no-alerts\">No alert.</p>");
    } else {
        html.push_str("<ul id=\"alerts\">");
        for a in &page.alerts {
            let _ = write!(
                html,
                "<li class=\"alert {severity}\" data-alert=\"{name}\"><span class=\"badge\">{severity}</span> \
                 <strong>{name}</strong> <code>{}</code><br>{}</li>",
                escape(&a.subject),
                escape(&a.reason),
                severity = a.severity,
                name = a.alert,
            );
        }
        html.push_str("</ul>");
    }
    html.push_str("<p class=\"note\">From the repository's listing: gaps, overdue backups, drills. The checksums are checked by <code>pitr verify</code>.</p>\n");
}

fn last_verify(html: &mut String, line: Option<&str>) {
    html.push_str("<h2>Last verify</h2>");
    match line {
        Some(line) => {
            let _ = writeln!(html, "<p id=\"last-verify\"><code>{}</code></p>", escape(line));
        }
        None => html.push_str(
            "<p class=\"none\" id=\"last-verify\">No record: run <code>pitr verify</code> (it appends to the log_file of [verify]).</p>\n",
        ),
    }
}

fn last_drills(html: &mut String, drills: &[DrillRecord]) {
    html.push_str("<h2>Last drill</h2>");
    let mut newest: Vec<&DrillRecord> = Tier::ALL
        .iter()
        .filter_map(|tier| drills.iter().rev().find(|d| d.tier == *tier))
        .collect();
    if newest.is_empty() {
        html.push_str("<p class=\"none\">No drill yet: <code>pitr drill</code>.</p>\n");
        return;
    }
    newest.sort_by_key(|d| std::cmp::Reverse(d.started));
    html.push_str("<table id=\"drills\"><tr><th>tier</th><th>result</th><th>RTO</th></tr>");
    for d in newest {
        let result = if d.passed {
            "<span class=\"pass\">passed</span>".to_string()
        } else {
            format!("<span class=\"fail\">failed</span>: {}", escape(&d.failures()))
        };
        let rto = d.rto_seconds.map_or("—".to_string(), |s| format!("{s:.0} s"));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{result}<br><span class=\"when\">{} · <code>{}</code></span></td><td>{rto}</td></tr>",
            d.tier,
            d.started.format("%Y-%m-%d %H:%M UTC"),
            escape(&d.backup_id)
        );
    }
    html.push_str("</table>\n");
}

fn unreadable(html: &mut String, problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    html.push_str("<h2>Unreadable</h2><ul id=\"unreadable\">");
    for p in problems {
        let _ = write!(html, "<li>{}</li>", escape(p));
    }
    html.push_str("</ul>\n");
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `text` as HTML text or a double- or single-quoted attribute value: never markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "\
*{box-sizing:border-box}\
body{margin:0;padding:20px 28px;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1d2329;background:#f5f7f9}\
header h1{margin:0;font-size:22px}\
.meta{margin:2px 0 14px;color:#5b6670}\
code{font:13px/1.3 ui-monospace,'DejaVu Sans Mono',monospace;overflow-wrap:anywhere}\
#headline{border-radius:8px;padding:12px 18px;margin-bottom:16px;border-left:8px solid;background:#fff}\
#headline.ok{border-color:#2e9e5b}#headline.warning{border-color:#e0a100}#headline.critical{border-color:#d62728}\
#headline p{margin:2px 0}#headline .big{font-size:19px}#headline .tl{color:#5b6670;font-size:15px}\
#headline.critical .verdict{color:#b71c1c;font-weight:600}#headline.warning .verdict{color:#8a6100;font-weight:600}\
.columns{display:grid;grid-template-columns:minmax(0,1fr) 340px;gap:20px;align-items:start}\
main,aside{background:#fff;border-radius:8px;padding:14px 18px}\
figure{margin:0}\
svg#timeline{width:100%;height:auto;display:block}\
.track{fill:#e8ecef}.window{fill:#3fa764}.gap{fill:#d62728}\
.row-label{font-size:15px;font-weight:600;fill:#333}\
.backup circle,.backup rect,.backup polygon{stroke:#fff;stroke-width:1.5}\
.restore-point line{stroke:#37474f;stroke-width:1.5}.restore-point polygon{fill:#37474f}\
.restore-point text{font-size:13px;fill:#37474f}\
.drill line{stroke:#9aa5ae;stroke-width:2;stroke-dasharray:4 3}\
.drill text{font-size:12px;font-weight:700;fill:#fff;text-anchor:middle}\
.drill-passed circle{fill:#2e9e5b}.drill-failed circle{fill:#d62728}\
.now line{stroke:#5b6670;stroke-dasharray:3 3}.now text{font-size:13px;fill:#5b6670;text-anchor:middle}\
.axis line{stroke:#8a949c}.axis text{font-size:13px;fill:#5b6670;text-anchor:middle}.axis .unit{text-anchor:start}\
.empty{fill:#5b6670}\
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px;font-size:13px;color:#39434b}\
.legend span{display:inline-flex;align-items:center;gap:6px}.legend svg{width:22px;height:16px}\
svg.icon{width:14px;height:14px;vertical-align:-2px;margin-right:6px}\
h2{font-size:16px;margin:18px 0 8px}main h2:first-of-type{margin-top:14px}aside h2:first-child{margin-top:0}\
table{border-collapse:collapse;width:100%;font-size:14px}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e7ea;vertical-align:top}th{color:#5b6670;font-weight:600}\
ul#alerts{list-style:none;padding:0;margin:0}\
.alert{padding:8px 10px;margin-bottom:8px;border-radius:6px;font-size:14px}\
.alert.critical{background:#fdecea;border-left:4px solid #d62728}.alert.warning{background:#fff6db;border-left:4px solid #e0a100}\
.badge{font-size:11px;text-transform:uppercase;letter-spacing:.05em;font-weight:700}\
.critical .badge{color:#b71c1c}.warning .badge{color:#8a6100}\
.none,.note,.when{color:#5b6670}.note,.when{font-size:12px}\
.pass{color:#1e7d45;font-weight:600}.fail{color:#b71c1c;font-weight:600}\
@media (max-width:900px){.columns{grid-template-columns:1fr}}\
";

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::verify::{Alert, AlertName};
    use crate::wal::Lsn;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 10, minute, 0).unwrap()
    }

    fn window(timeline: TimelineId, from: u32, to: u32) -> Window {
        Window {
            timeline,
            from_backup: "b".into(),
            start_time: at(from),
            start_lsn: Lsn(0),
            end_time: at(to),
            end_lsn: Lsn(0),
            end_wal: "000000010000000000000003".into(),
        }
    }

    fn page() -> StatusPage {
        StatusPage {
            now: at(40),
            repository: "/backups".into(),
            windows: vec![window(1, 0, 20), window(2, 25, 38)],
            backups: vec![
                BackupMark {
                    id: "20261207T100000-hourly".into(),
                    tier: Tier::Hourly,
                    timeline: 1,
                    stop_time: at(0),
                },
                BackupMark {
                    id: "20261207T102500-weekly".into(),
                    tier: Tier::Weekly,
                    timeline: 2,
                    stop_time: at(25),
                },
            ],
            restore_points: vec![RestorePoint {
                name: "<script>alert(1)</script>".into(),
                lsn: Lsn(0x3000000),
                time: at(10),
                timeline: 1,
                wal_file: "000000010000000000000003".into(),
                generation: 1,
            }],
            gaps: Vec::new(),
            alerts: vec![Alert::new(AlertName::WalArchiveGap, "x\"><b>", "<img src=x>")],
            drills: Vec::new(),
            last_verify: Some("verify all: ok <0 alerts>".into()),
            unreadable: Vec::new(),
        }
    }

    /// The value of attribute `name` in the first element of `class` in `html`.
    fn attribute(html: &str, class: &str, name: &str) -> f64 {
        let element = &html[html.find(&format!("class=\"{class}\"")).unwrap()..];
        let value = &element[element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3..];
        value[..value.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn the_scale_places_moments_proportional_to_time() {
        let scale = Scale {
            start: at(0),
            end: at(40),
        };
        assert_eq!(scale.x(at(0)), AXIS_LEFT);
        assert_eq!(scale.x(at(40)), WIDTH - AXIS_RIGHT);
        assert!((scale.x(at(10)) - (AXIS_LEFT + Scale::width() / 4.0)).abs() < 1e-9);
        let (x, width) = scale.span(at(10), at(30), MIN_SPAN);
        assert!((x - scale.x(at(10))).abs() < 1e-9);
        assert!((width - Scale::width() / 2.0).abs() < 1e-9);
        let (x, width) = scale.span(at(20), at(20), MIN_SPAN);
        assert_eq!(
            (x, width),
            (scale.x(at(20)) - MIN_SPAN / 2.0, MIN_SPAN),
            "a moment stays visible"
        );
    }

    #[test]
    fn ticks_are_round_moments_within_the_scale() {
        let day = Scale {
            start: at(0) - TimeDelta::hours(30),
            end: at(0),
        };
        let step = day.tick_step();
        assert_eq!(step, 6 * 3600);
        let ticks = day.ticks(step);
        assert!(ticks.len() >= 2 && ticks.len() as i64 <= MAX_TICKS, "{ticks:?}");
        assert!(ticks
            .iter()
            .all(|t| t.timestamp() % step == 0 && day.start < *t && *t <= day.end));
        let months = Scale {
            start: at(0) - TimeDelta::days(90),
            end: at(0),
        };
        let step = months.tick_step();
        assert_eq!(step % 86400, 0, "whole days");
        assert!(months.ticks(step).len() as i64 <= MAX_TICKS);
        let minute = Scale {
            start: at(0),
            end: at(1),
        };
        assert_eq!(minute.tick_step(), 10);
    }

    #[test]
    fn the_scale_covers_every_moment_and_now() {
        let scale = Scale::covering([at(10), at(30)], at(50));
        assert!(scale.start < at(10) && scale.end > at(50));
        assert!(scale.x(at(10)) > AXIS_LEFT && scale.x(at(50)) < WIDTH - AXIS_RIGHT);
        let single = Scale::covering([], at(50));
        assert!(single.end - single.start >= TimeDelta::minutes(1), "never zero wide");
        let moment = at(50) - TimeDelta::seconds(10);
        let recent = Scale::covering([moment], at(50));
        assert!(
            recent.x(moment) > AXIS_LEFT + Scale::width() / 2.0,
            "a short history lies near now"
        );
    }

    #[test]
    fn windows_and_markers_lie_where_their_times_are() {
        let page = page();
        let html = render(&page);
        let scale = Scale::covering(moments(&page), page.now);
        let (x, width) = scale.span(at(0), at(20), MIN_SPAN);
        assert!((attribute(&html, "window", "x") - x).abs() < 0.06, "{html}");
        assert!((attribute(&html, "window", "width") - width).abs() < 0.06);
        assert!((attribute(&html, "backup backup-hourly", "cx") - scale.x(at(0))).abs() < 0.06);
        let restore_point = &html[html.find("class=\"restore-point\" data-name").unwrap()..];
        assert!((attribute(restore_point, "restore-point", "x1") - scale.x(at(10))).abs() < 0.06);
        assert_eq!(
            html.matches("class=\"timeline-row\"").count(),
            2,
            "one row per timeline"
        );
        assert_eq!(html.matches("<g class=\"backup ").count(), 2, "one element per backup");
    }

    #[test]
    fn a_gap_is_drawn_in_red_on_its_timeline() {
        let mut page = page();
        page.gaps.push(GapSpan {
            gap: crate::verify::Gap {
                timeline: 1,
                first: "000000010000000000000005".into(),
                last: "000000010000000000000005".into(),
                segments: 1,
                first_segno: 5,
                last_segno: 5,
            },
            from: at(20),
            to: at(22),
        });
        let html = render(&page);
        let scale = Scale::covering(moments(&page), page.now);
        let gap = &html[html.find("<rect class=\"gap\" data-first").unwrap()..];
        assert!(gap.contains("segment 000000010000000000000005 is missing"));
        assert!((attribute(gap, "gap", "x") - scale.x(at(20))).abs() < 0.06);
        let row_1 = &html[html.find("data-timeline=\"1\"").unwrap()..html.find("data-timeline=\"2\"").unwrap()];
        assert!(row_1.contains("class=\"gap\""), "on timeline 1's row");
    }

    #[test]
    fn drills_are_marked_passed_or_failed_where_they_proved_recovery() {
        let mut page = page();
        let drill = |tier: Tier, minute: u32, passed: bool| DrillRecord {
            started: at(minute + 1),
            tier,
            backup_id: "20261207T100000-hourly".into(),
            target: "immediate".into(),
            reached_lsn: None,
            reached_time: None,
            rto_seconds: Some(12.0),
            rpo_seconds: Some(30.0),
            recoverable_until: Some(at(minute)),
            bytes_restored: 1,
            checks: vec![crate::drill::DrillCheck {
                check: "amcheck".into(),
                passed,
                detail: "<b>index t_pkey</b>".into(),
            }],
            passed,
        };
        page.drills = vec![drill(Tier::Hourly, 20, true), drill(Tier::Weekly, 30, false)];
        let html = render(&page);
        let scale = Scale::covering(moments(&page), page.now);
        let passed = &html[html.find("<g class=\"drill drill-passed\" data-tier").unwrap()..];
        assert!((attribute(passed, "drill drill-passed", "cx") - scale.x(at(20))).abs() < 0.06);
        let failed = &html[html.find("<g class=\"drill drill-failed\" data-tier").unwrap()..];
        assert!((attribute(failed, "drill drill-failed", "cx") - scale.x(at(30))).abs() < 0.06);
        assert!(
            html.contains("amcheck: &lt;b&gt;index t_pkey&lt;/b&gt;"),
            "why it failed, escaped"
        );
        let drills = &html[html.find("<table id=\"drills\">").unwrap()..];
        assert!(
            drills.find("weekly").unwrap() < drills.find("hourly").unwrap(),
            "newest first"
        );
    }

    #[test]
    fn nothing_from_the_repository_becomes_markup() {
        let html = render(&page());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<b>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("x&quot;&gt;&lt;b&gt;"));
        assert!(html.contains("verify all: ok &lt;0 alerts&gt;"));
    }

    #[test]
    fn the_headline_names_the_newest_window_and_the_page_refreshes() {
        let html = render(&page());
        assert!(html.contains(
            "You can recover to any moment between <strong>2026-12-07 10:25:00 UTC</strong> and \
             <strong>2026-12-07 10:38:00 UTC</strong>"
        ));
        assert!(html.contains("<section id=\"headline\" class=\"critical\">"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"60\">"));
        assert!(!html.contains("://"), "nothing external");
    }
}
