//! The status page as the daemon serves it at `/`: made anew at most once per [`FRESH_FOR`],
//! however many requests come, so that a refresh storm cannot make the daemon list the whole
//! repository each time. Requests that come while it is being made wait for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a made page is served as it is.
pub const FRESH_FOR: Duration = Duration::from_secs(15);

/// The newest page made, and when.
#[derive(Default)]
pub struct PageCache {
    made: Mutex<Option<(Instant, String)>>,
}

impl PageCache {
    /// The cached page while fresh, else the one `make` makes.
    pub fn get(&self, make: impl FnOnce() -> String) -> String {
        let mut made = self.made.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, page)) = made.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return page.clone();
            }
        }
        let page = make();
        *made = Some((Instant::now(), page.clone()));
        page
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_fresh_page_is_not_made_again() {
        let cache = PageCache::default();
        let made = Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            format!("page {}", made.get())
        };
        assert_eq!(cache.get(make), "page 1");
        assert_eq!(cache.get(make), "page 1");
        assert_eq!(made.get(), 1);
        *cache.made.lock().unwrap() = Some((Instant::now() - FRESH_FOR, "old".into()));
        assert_eq!(cache.get(make), "page 2", "a stale page is made anew");
    }
}
