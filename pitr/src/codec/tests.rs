use proptest::prelude::*;

use super::*;

fn all_codecs() -> Vec<Codec> {
    vec![
        Codec::new(Compression::None, None).unwrap(),
        Codec::new(Compression::Zstd, None).unwrap(),
        Codec::new(Compression::Zstd, Some(1)).unwrap(),
        Codec::new(Compression::Gzip, None).unwrap(),
    ]
}

/// [`decode_chunks`] collected, with the sizes of the chunks it handed over; checked to agree
/// with [`decode_chunks_pipelined`] (the same chunks, or an error from both).
fn chunked(object: &[u8]) -> Result<(Vec<u8>, Vec<usize>)> {
    let sequential = collected(object, decode_chunks);
    let pipelined = collected(object, |object, what, each| {
        decode_chunks_pipelined(ObjectStream::of_slice(object, what)?, what, each)
    });
    match (&sequential, &pipelined) {
        (Ok(one), Ok(other)) => assert!(one == other, "the pipelined decode handed over other chunks"),
        (Err(one), Err(other)) => assert_eq!(one.to_string(), other.to_string()),
        _ => panic!("the decodes disagree: {sequential:?} against {pipelined:?}"),
    }
    sequential
}

type ChunkDecoder = fn(&[u8], &str, &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64>;

fn collected(object: &[u8], decode: ChunkDecoder) -> Result<(Vec<u8>, Vec<usize>)> {
    let (mut out, mut sizes) = (Vec::new(), Vec::new());
    let total = decode(object, "test", &mut |chunk| {
        sizes.push(chunk.len());
        out.extend_from_slice(chunk);
        Ok(())
    })?;
    assert_eq!(total, out.len() as u64);
    Ok((out, sizes))
}

#[test]
fn a_pipelined_decode_stops_at_the_callers_error_and_returns_it() {
    let raw: Vec<u8> = (0..(40 * CHUNK)).map(|i| (i / 3 % 241) as u8).collect();
    let object = Codec::default().encode(&raw);
    let mut handed = 0;
    let err = decode_chunks_pipelined(ObjectStream::of_slice(&object, "test").unwrap(), "test", &mut |_| {
        handed += 1;
        match handed {
            2 => Err(Error::InvalidInput("the caller's error".into())),
            _ => Ok(()),
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("the caller's error"), "{err}");
    assert_eq!(handed, 2);
}

#[test]
fn chunked_decoding_hands_over_full_chunks_in_order() {
    let raw: Vec<u8> = (0..(5 * CHUNK / 2)).map(|i| (i / 5 % 251) as u8).collect();
    for codec in all_codecs() {
        let (decoded, sizes) = chunked(&codec.encode(&raw)).unwrap();
        assert!(decoded == raw, "{codec:?}");
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK / 2], "{codec:?}");
    }
}

#[test]
fn every_codec_round_trips_and_records_the_crc() {
    let raw: Vec<u8> = (0..300_000u32).map(|i| (i / 7 % 256) as u8).collect();
    for codec in all_codecs() {
        let object = codec.encode(&raw);
        let header = ObjectHeader::parse(&object, "test").unwrap();
        assert_eq!(header.compression, codec.compression);
        assert_eq!(header.raw_len, raw.len() as u64);
        assert_eq!(header.raw_crc, crc32fast::hash(&raw));
        assert_eq!(decode(&object, "test").unwrap(), raw, "{codec:?}");
    }
}

#[test]
fn encoding_from_a_reader_on_several_threads_gives_an_object_any_decoder_reads() {
    // 9 MiB of WAL-like content: several zstd jobs of 2 MiB, and a short last one.
    let raw: Vec<u8> = (0..9 * (1u32 << 20) + 12_345)
        .map(|i| (i / 13 % 241) as u8 ^ (i >> 17) as u8)
        .collect();
    for codec in all_codecs() {
        for threads in [1, 2, 4] {
            let object = codec.encode_from(&mut &raw[..], threads).unwrap();
            let header = ObjectHeader::parse(&object, "test").unwrap();
            assert_eq!(
                (header.raw_len, header.raw_crc),
                (raw.len() as u64, crc32fast::hash(&raw))
            );
            assert!(
                decode(&object, "test").unwrap() == raw,
                "{codec:?} on {threads} threads"
            );
            assert!(chunked(&object).unwrap().0 == raw, "{codec:?} on {threads} threads");
        }
    }
}

#[test]
fn a_read_error_while_encoding_is_returned_not_stored() {
    struct FailsAfter(usize);
    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    for codec in all_codecs() {
        let err = codec.encode_from(&mut FailsAfter(3 << 20), 2).unwrap_err();
        assert_eq!(err.to_string(), "disk gone", "{codec:?}");
    }
}

#[test]
fn compression_shrinks_compressible_data() {
    let raw = vec![0u8; 1 << 20];
    assert!(Codec::default().encode(&raw).len() < 1000);
    assert!(Codec::new(Compression::Gzip, None).unwrap().encode(&raw).len() < 5000);
}

#[test]
fn no_flipped_byte_ever_decodes_to_wrong_content() {
    let raw: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 253) as u8).collect();
    for codec in all_codecs() {
        let object = codec.encode(&raw);
        for i in 0..object.len() {
            let mut bad = object.clone();
            bad[i] ^= 0x40;
            // A flip either fails the check or hits a byte that does not change the content
            // (such as zstd's window descriptor); it never yields other content.
            if let Ok(decoded) = decode(&bad, "x") {
                assert_eq!(decoded, raw, "{codec:?}: flip at byte {i} gave other content");
                assert!(
                    i >= HEADER_LEN,
                    "{codec:?}: flip in the header at byte {i} not detected"
                );
            }
            if let Ok((decoded, _)) = chunked(&bad) {
                assert_eq!(decoded, raw, "{codec:?}: chunked, flip at byte {i} gave other content");
            }
        }
    }
}

#[test]
fn truncation_and_junk_are_corruption() {
    let object = Codec::default().encode(b"some wal bytes");
    for len in [0, 3, HEADER_LEN - 1, HEADER_LEN, object.len() - 1] {
        let err = decode(&object[..len], "wal/x").unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{len}: {err}");
        let err = chunked(&object[..len]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "chunked, {len}: {err}");
    }
    assert!(decode(b"\x28\xb5\x2f\xfd plain zstd, not ours", "x").is_err());
}

#[test]
fn levels_are_checked_per_compression() {
    assert!(Codec::new(Compression::Zstd, Some(0)).is_err());
    assert!(Codec::new(Compression::Zstd, Some(20)).is_err());
    assert!(Codec::new(Compression::Gzip, Some(10)).is_err());
    assert!(
        Codec::new(Compression::None, Some(3)).is_ok(),
        "no compression, no level to check"
    );
    assert_eq!("zst".parse::<Compression>().unwrap(), Compression::Zstd);
    assert!("lz4"
        .parse::<Compression>()
        .unwrap_err()
        .to_string()
        .contains("zstd, gzip or none"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_round_trip(raw in proptest::collection::vec(any::<u8>(), 0..20_000), which in 0usize..4) {
        let codec = all_codecs()[which];
        prop_assert_eq!(decode(&codec.encode(&raw), "p").unwrap(), raw);
    }
}

/// A source that hands over its bytes, then fails as a dropped connection does.
struct CutShort<'a>(&'a [u8]);

impl Read for CutShort<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(SourceError::into_io(Error::InvalidInput(
                "the connection dropped".into(),
            )));
        }
        let n = buf.len().min(self.0.len()).min(1000);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn a_source_failing_midway_is_reported_as_its_own_error_not_as_corruption() {
    let raw: Vec<u8> = (0..(8 * CHUNK)).map(|i| (i * 7 % 253) as u8).collect();
    let object = Codec::default().encode(&raw);
    for cut in [10, object.len() / 2, object.len() - 1] {
        let err = ObjectStream::open(Box::new(std::io::BufReader::new(CutShort(&object[..cut]))), "test")
            .and_then(|stream| decode_chunks_pipelined(stream, "test", &mut |_| Ok(())))
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m == "the connection dropped"),
            "{cut}: {err:?}"
        );
    }
}
