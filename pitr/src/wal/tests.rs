use proptest::prelude::*;

use super::*;

fn all_sizes() -> impl Strategy<Value = SegmentSize> {
    (20u32..=30).prop_map(|shift| SegmentSize::new(1 << shift).unwrap())
}

/// A real segment header as PostgreSQL 15 writes it (postgres-facts §3.1), for `segno` of `size`.
fn header(size: SegmentSize, timeline: u32, segno: u64, sysid: u64) -> Vec<u8> {
    let mut page = vec![0u8; size.bytes() as usize];
    page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    page[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    page[4..8].copy_from_slice(&timeline.to_le_bytes());
    page[8..16].copy_from_slice(&size.segment_start(segno).0.to_le_bytes());
    page[24..32].copy_from_slice(&sysid.to_le_bytes());
    page[32..36].copy_from_slice(&size.bytes().to_le_bytes());
    page[36..40].copy_from_slice(&8192u32.to_le_bytes());
    page
}

fn name(s: &str) -> SegmentName {
    WalFileName::parse(s).unwrap().segment_name().unwrap()
}

#[test]
fn lsn_text_form_matches_postgres() {
    assert_eq!(Lsn(0x1_500718).to_string(), "0/1500718");
    assert_eq!(Lsn(0xABCD_EF012345).to_string(), "ABCD/EF012345");
    assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374D848));
    assert_eq!("0/0000ABCD".parse::<Lsn>().unwrap(), Lsn(0xABCD), "PG19's %X/%08X form");
    for bad in ["", "0", "/1", "1/", "G/0", "1/123456789", "1/2/3"] {
        assert!(bad.parse::<Lsn>().is_err(), "{bad} must not parse");
    }
}

#[test]
fn segment_names_match_the_reference_table() {
    // postgres-facts §2: LSN → file name for 16 MB, 64 MB and 1 GB segments.
    let cases = [
        (
            0x1500718u64,
            [
                (16, "000000010000000000000001"),
                (64, "000000010000000000000000"),
                (1024, "000000010000000000000000"),
            ],
        ),
        (
            0x2_FFFFFFFF,
            [
                (16, "0000000100000002000000FF"),
                (64, "00000001000000020000003F"),
                (1024, "000000010000000200000003"),
            ],
        ),
        (
            0xABCD_EF012345,
            [
                (16, "000000010000ABCD000000EF"),
                (64, "000000010000ABCD0000003B"),
                (1024, "000000010000ABCD00000003"),
            ],
        ),
    ];
    for (lsn, expected) in cases {
        for (mb, want) in expected {
            let size = SegmentSize::new(mb << 20).unwrap();
            let seg = Segment {
                timeline: 1,
                segno: size.segment_of(Lsn(lsn)),
            };
            assert_eq!(seg.file_name(size), want, "lsn {} at {mb} MB", Lsn(lsn));
        }
    }
}

#[test]
fn an_end_pointer_on_a_boundary_belongs_to_the_previous_segment() {
    let size = SegmentSize::DEFAULT;
    let end = Lsn(0x1_00000000);
    assert_eq!(
        Segment {
            timeline: 1,
            segno: size.segment_of(end)
        }
        .file_name(size),
        "000000010000000100000000"
    );
    assert_eq!(
        Segment {
            timeline: 1,
            segno: size.segment_before(end)
        }
        .file_name(size),
        "0000000100000000000000FF"
    );
}

#[test]
fn only_postgres_segment_sizes_are_valid() {
    for bytes in [0, 1 << 19, 3 << 20, (1 << 30) + 1, 1 << 31, u32::MAX] {
        assert_eq!(SegmentSize::new(bytes), None, "{bytes}");
    }
    for shift in 20..=30 {
        assert!(SegmentSize::new(1 << shift).is_some());
    }
}

#[test]
fn file_names_parse_by_kind() {
    let seg = name("000000010000000A000000FF");
    assert_eq!((seg.timeline, seg.log, seg.seg), (1, 0xA, 0xFF));
    assert_eq!(
        WalFileName::parse("0000000A.history").unwrap(),
        WalFileName::History(10)
    );
    assert_eq!(
        WalFileName::parse("000000010000000000000002.00000028.backup").unwrap(),
        WalFileName::Backup(name("000000010000000000000002"), 0x28)
    );
    assert_eq!(
        WalFileName::parse("000000010000000000000005.partial").unwrap(),
        WalFileName::Partial(name("000000010000000000000005"))
    );
    for bad in [
        "",
        "foo",
        "RECOVERYXLOG",
        "00000001000000000000000",
        "0000000100000000000000001",
        "00000001000000000000000a",
        "000000010000000000000001.tmp",
        "000000010000000000000001.ready",
        "0000001.history",
        "000000010000000000000002.28.backup",
        "../000000010000000000000001",
        "archtemp.000000010000000000000001",
    ] {
        assert!(WalFileName::parse(bad).is_err(), "{bad} must be refused");
    }
}

#[test]
fn the_page_header_of_a_real_pg15_segment_validates() {
    // The first 40 bytes of a real PostgreSQL 15.18 segment 000000010000000000000001 (postgres-facts §3.1).
    let hex = [
        "10d10200",
        "01000000",
        "0000000100000000",
        "00000000",
        "00000000",
        "c228aa0ff2e00d6a",
        "00000001",
        "00200000",
    ]
    .concat();
    let mut bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes.resize(16 << 20, 0);
    let h = LongPageHeader::validate(name("000000010000000000000001"), &bytes).unwrap();
    assert_eq!(h.pg_version, 15);
    assert_eq!(h.system_identifier, 7642011472967116994);
    assert_eq!(h.page_address, Lsn(0x1000000));
    assert_eq!(h.segment_size, SegmentSize::DEFAULT);
}

#[test]
fn page_header_refusals_say_why() {
    let size = SegmentSize::new(1 << 20).unwrap();
    let good = header(size, 1, 3, 42);
    let n = name("000000010000000000000003");
    assert!(LongPageHeader::validate(n, &good).is_ok());
    let refuse = |bytes: &[u8], n: SegmentName, why: &str| {
        let err = LongPageHeader::validate(n, bytes).unwrap_err();
        assert!(err.contains(why), "expected '{why}' in '{err}'");
    };
    refuse(&good[..30], n, "too short");
    refuse(&good[..good.len() - 8192], n, "segment size is");
    refuse(&good, name("000000010000000000000004"), "page address");
    refuse(
        &good,
        name("000000010000000000001003"),
        "does not exist with 1 MiB segments",
    );
    let mut bad = good.clone();
    bad[0] = 0x99;
    refuse(&bad, n, "magic");
    let mut bad = good.clone();
    bad[2] = 0;
    refuse(&bad, n, "flags");
    let mut bad = good.clone();
    bad[4] = 2;
    refuse(&bad, n, "timeline");
}

#[test]
fn history_files_parse_like_postgres_reads_them() {
    let text = b"1\t0/3000148\tbefore 2024-05-01 12:00:00.123456+00\n\n2\t0/5000000\tat restore point \"x\"\n";
    let switches = parse_history(text).unwrap();
    assert_eq!(switches.len(), 2);
    assert_eq!((switches[0].parent, switches[0].switchpoint), (1, Lsn(0x3000148)));
    assert_eq!(switches[1].reason, "at restore point \"x\"");
    assert!(parse_history(b"# comment\n1\t0/3000000\tno recovery target specified\n").is_ok());
    assert!(parse_history(b"not a history\n").is_err());
    assert!(
        parse_history(b"2\t0/1\tx\n1\t0/2\ty\n").is_err(),
        "timelines must increase"
    );
    assert!(parse_history(&[0xff, 0xfe]).is_err());
}

#[test]
fn content_is_validated_by_the_kind_of_name() {
    let size = SegmentSize::new(1 << 20).unwrap();
    let parse = |n: &str| WalFileName::parse(n).unwrap();
    let segment = header(size, 1, 3, 42);
    let found = parse("000000010000000000000003").validate_content(&segment).unwrap();
    assert_eq!(found.map(|h| h.system_identifier), Some(42));
    assert!(parse("000000010000000000000003.partial")
        .validate_content(&segment)
        .is_ok());
    assert!(parse("000000010000000000000004").validate_content(&segment).is_err());
    assert_eq!(
        parse("00000002.history").validate_content(b"1\t0/3000000\tx\n"),
        Ok(None)
    );
    assert!(parse("00000002.history").validate_content(b"garbage\n").is_err());
    let backup = parse("000000010000000000000003.00000028.backup");
    assert_eq!(
        backup.validate_content(b"START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n"),
        Ok(None)
    );
    assert!(backup.validate_content(b"LABEL: x\n").is_err());
}

/// archive-push refuses what PostgreSQL itself would refuse to read, or what lies about its name.
#[test]
fn history_and_backup_files_must_agree_with_their_names() {
    let parse = |n: &str| WalFileName::parse(n).unwrap();
    let history = parse("00000003.history");
    assert!(history.validate_content(b"1\t0/3000000\tx\n2\t0/5000000\ty\n").is_ok());
    let not_below = history
        .validate_content(b"1\t0/3000000\tx\n3\t0/5000000\ty\n")
        .unwrap_err();
    assert!(not_below.contains("not below"), "{not_below}");
    assert!(history.validate_content(b"5\t0/3000000\tx\n").is_err());
    assert!(
        history.validate_content(b"# nothing\n").is_err(),
        "a child timeline names its parent"
    );

    let backup = parse("000000010000000000000003.00000028.backup");
    for junk in [
        "START WAL LOCATION: junk (file 000000010000000000000003)\n",
        "START WAL LOCATION: 0/3000028\n",
        "START WAL LOCATION: 0/3000028 (file 000000010000000000000004)\n",
        "START WAL LOCATION: 0/3000030 (file 000000010000000000000003)\n",
        "START WAL LOCATION: 0/4000028 (file 000000010000000000000003)\n",
    ] {
        assert!(backup.validate_content(junk.as_bytes()).is_err(), "{junk}");
    }
    let big_segments = parse("000000010000000000000003.00000028.backup");
    assert!(
        big_segments
            .validate_content(b"START WAL LOCATION: 0/C0000028 (file 000000010000000000000003)\n")
            .is_ok(),
        "64 MiB segments: segment 3 starts at 0/C0000000"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn names_round_trip_for_every_segment_size(size in all_sizes(), timeline in 1u32.., lsn in 0u64..(1 << 56)) {
        let segment = Segment { timeline, segno: size.segment_of(Lsn(lsn)) };
        let text = segment.file_name(size);
        let parsed = WalFileName::parse(&text).unwrap();
        prop_assert_eq!(parsed.to_string(), text.clone());
        prop_assert_eq!(parsed.segment_name().unwrap().segment(size), Some(segment));
        prop_assert!(size.segment_start(segment.segno) <= Lsn(lsn));
        prop_assert!(Lsn(lsn) < size.segment_start(segment.segno + 1));
    }

    #[test]
    fn lsn_text_round_trips(lsn: u64) {
        prop_assert_eq!(Lsn(lsn).to_string().parse::<Lsn>().unwrap(), Lsn(lsn));
    }

    #[test]
    fn segment_before_is_segment_of_the_previous_byte(size in all_sizes(), lsn in 1u64..) {
        prop_assert_eq!(size.segment_before(Lsn(lsn)), size.segment_of(Lsn(lsn - 1)));
    }

    #[test]
    fn headers_validate_only_under_their_own_name(shift in 20u32..=24, segno in 0u64..5000, other in 0u64..5000, sysid: u64) {
        let size = SegmentSize::new(1 << shift).unwrap();
        let bytes = header(size, 1, segno, sysid);
        let own = Segment { timeline: 1, segno }.file_name(size);
        let h = LongPageHeader::validate(name(&own), &bytes).unwrap();
        prop_assert_eq!(h.system_identifier, sysid);
        let foreign = Segment { timeline: 1, segno: other }.file_name(size);
        prop_assert_eq!(LongPageHeader::validate(name(&foreign), &bytes).is_ok(), other == segno);
    }
}
