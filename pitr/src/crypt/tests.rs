use super::*;

fn keys() -> Keys {
    let (secret, recipient) = Keys::generate();
    Keys::load(Some(KeySource::Env("R", recipient)), Some(KeySource::Env("I", secret))).unwrap()
}

#[test]
fn a_sealed_object_decrypts_whole_streamed_and_by_range() {
    let keys = keys();
    let plain: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sealed = keys.seal(&plain, 1).unwrap();
    assert!(is_sealed(&sealed));
    assert!(
        sealed.windows(64).all(|w| !plain.windows(64).take(10).any(|p| p == w)),
        "no plaintext shows"
    );
    assert_eq!(keys.unseal(&sealed, "obj", &[]).unwrap(), plain);
    let mut streamed = Vec::new();
    keys.unseal_reader(Box::new(io::Cursor::new(sealed.clone())), "obj", &[])
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, plain);
    let fetches = std::cell::Cell::new(0);
    let fetch = |at: u64, n: u64| {
        fetches.set(fetches.get() + 1);
        Ok(sealed[at as usize..(at + n) as usize].to_vec())
    };
    for (start, len) in [
        (0, 10),
        (65_530, 20),
        (131_072, 65_536),
        (299_990, 10),
        (5, 299_995),
        (70_000, 0),
    ] {
        let got = keys.unseal_range(&fetch, start, len, "obj", &[]).unwrap();
        assert_eq!(got, plain[start as usize..(start + len) as usize], "{start}+{len}");
    }
    assert!(
        keys.unseal_range(&fetch, 299_990, 11, "obj", &[]).is_err(),
        "past the end"
    );
    assert!(
        fetches.get() <= 6 * 4 + 1,
        "a range takes a few reads, not one per chunk: {}",
        fetches.get()
    );
    let header = check_public(&sealed, "obj").unwrap();
    assert_eq!(
        (header.plain_len, header.plain_crc),
        (plain.len() as u64, crc32c::crc32c(&plain))
    );
}

#[test]
fn every_flipped_byte_is_found_with_or_without_the_key() {
    let keys = keys();
    let sealed = keys.seal(b"a history file's few bytes", 1).unwrap();
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x20;
        assert!(check_public(&bad, "obj").is_err(), "byte {i}: the public check");
        assert!(keys.unseal(&bad, "obj", &[]).is_err(), "byte {i}: decryption");
    }
}

#[test]
fn a_missing_or_wrong_identity_is_refused_by_name() {
    let (_, recipient) = Keys::generate();
    let writer = Keys::load(Some(KeySource::Env("R", recipient)), None).unwrap();
    let sealed = writer.seal(b"x", 1).unwrap();
    let recorded = writer.recipient_fingerprints();
    let err = writer.unseal(&sealed, "wal/x", &recorded).unwrap_err().to_string();
    assert!(
        err.contains("no identity was given") && err.contains(&recorded[0]),
        "{err}"
    );
    let other = keys();
    let err = other.unseal(&sealed, "wal/x", &recorded).unwrap_err().to_string();
    assert!(
        err.contains("no identity given matches") && err.contains(&recorded[0]),
        "{err}"
    );
}

#[test]
fn key_files_are_checked_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, recipient) = Keys::generate();
    let path = dir.path().join("identity");
    std::fs::write(&path, format!("# created by a test\n{secret}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Keys::load(None, Some(KeySource::File(&path))).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keys = Keys::load(None, Some(KeySource::File(&path))).unwrap();
    assert_eq!(keys.identity_fingerprints().len(), 1);
    let bad = format!("{}x", &secret[..secret.len() - 1]);
    let err = Keys::load(None, Some(KeySource::Env("PITR_IDENTITY", bad.clone())))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1") && !err.contains(&bad[..20]), "{err}");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(
        Keys::load(None, Some(KeySource::File(&link))).is_err(),
        "a symlink is not followed"
    );
    assert!(!format!("{keys:?}").contains(&secret[..20]));
    let _ = recipient;
}

#[test]
fn a_large_object_is_decrypted_ahead_and_its_damage_still_fails_the_read() {
    let keys = keys();
    let plain: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let sealed = keys.seal(&plain, 1).unwrap();
    let read = |bytes: Vec<u8>| {
        let mut out = Vec::new();
        keys.unseal_reader(Box::new(io::Cursor::new(bytes)), "obj", &[])
            .unwrap()
            .read_to_end(&mut out)
            .map(|_| out)
    };
    assert_eq!(read(sealed.clone()).unwrap(), plain);
    let mut damaged = sealed.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let err = read(damaged).unwrap_err();
    assert!(err.to_string().contains("cannot be decrypted"), "{err}");
    let mut cut = sealed;
    cut.truncate(cut.len() - 100);
    assert!(read(cut).is_err(), "a cut object never reads as a shorter one");
}

/// The X25519 stanzas are age's: the age crate's own keys read what pitr writes, and pitr reads
/// what they write.
#[test]
fn objects_are_age_files_that_age_itself_reads_and_writes() {
    use age::secrecy::ExposeSecret;
    use std::str::FromStr;
    let age_identity = age::x25519::Identity::generate();
    let secret = age_identity.to_string().expose_secret().to_string();
    let recipient = age_identity.to_public().to_string();
    let keys = Keys::load(
        Some(KeySource::Env("R", recipient.clone())),
        Some(KeySource::Env("I", secret)),
    )
    .unwrap();
    assert_eq!(keys.identity_fingerprints(), vec![fingerprint(&recipient)]);
    let shouted = Keys::load(Some(KeySource::Env("R", recipient.to_uppercase())), None).unwrap();
    assert_eq!(
        shouted.recipient_fingerprints(),
        vec![fingerprint(&recipient)],
        "one key, one fingerprint"
    );
    let age_recipient = age::x25519::Recipient::from_str(&recipient).unwrap();
    let chunk = CHUNK as usize;
    // Empty, short, and each side of the 64 KiB chunks (the last chunk full or not).
    for len in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 3 * chunk + 17] {
        let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
        let sealed = keys.seal(&plain, 1).unwrap();
        let mut by_age = Vec::new();
        age::Decryptor::new_buffered(&sealed[HEADER_LEN..])
            .unwrap()
            .decrypt(std::iter::once(&age_identity as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut by_age)
            .unwrap();
        assert_eq!(by_age, plain, "age reads pitr's {len} bytes");
        assert_eq!(keys.unseal(&sealed, "obj", &[]).unwrap(), plain);

        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&age_recipient as &dyn age::Recipient)).unwrap();
        let mut age_file = Vec::new();
        let mut writer = encryptor.wrap_output(&mut age_file).unwrap();
        writer.write_all(&plain).unwrap();
        writer.finish().unwrap();
        let mut by_pitr = Vec::new();
        keys.decryptor(&age_file[..], age_file.len() as u64, "obj", &[])
            .unwrap()
            .read_to_end(&mut by_pitr)
            .unwrap();
        assert_eq!(by_pitr, plain, "pitr reads age's {len} bytes");
    }
}

/// The payload's length comes from the (untrusted) envelope: an age file cut after a whole chunk,
/// or given a chunk more, or told a length other than its own, fails to decrypt; it never ends
/// early as if whole.
#[test]
fn a_payload_cut_at_a_chunk_or_extended_is_refused() {
    let keys = keys();
    let plain = vec![7u8; 3 * CHUNK as usize + 100];
    let sealed = keys.seal(&plain, 1).unwrap();
    let age_file = &sealed[HEADER_LEN..];
    let payload_start = age_file.len() - (3 * SEALED_CHUNK as usize + 100 + 16);
    let read = |bytes: &[u8], len: u64| -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match keys.decryptor(bytes, len, "obj", &[]) {
            Ok(mut reader) => reader.read_to_end(&mut out).map(|_| out),
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    };
    assert_eq!(read(age_file, age_file.len() as u64).unwrap(), plain);
    for chunks in 1..=3 {
        let cut = &age_file[..payload_start + chunks * SEALED_CHUNK as usize];
        assert!(read(cut, cut.len() as u64).is_err(), "cut after {chunks} chunks");
    }
    let mut extended = age_file.to_vec();
    extended.extend_from_slice(&age_file[payload_start..payload_start + SEALED_CHUNK as usize]);
    assert!(read(&extended, extended.len() as u64).is_err(), "a chunk appended");
    assert!(read(age_file, age_file.len() as u64 - 1).is_err(), "a length one short");
    assert!(read(age_file, age_file.len() as u64 + 1).is_err(), "a length one long");
}

/// A stanza whose share is not canonical base64, not 32 bytes, or a low-order point (whose
/// agreement is all zeros) is a damaged header, never a key that merely does not match.
#[test]
fn a_malformed_or_low_order_share_is_a_damaged_header() {
    use age::Identity as _;
    let keys = keys();
    let identity = &keys.identities[0];
    let body = vec![0u8; 32];
    let stanza = |arg: &str| age_core::format::Stanza {
        tag: "X25519".into(),
        args: vec![arg.to_string()],
        body: body.clone(),
    };
    let zero_point = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let padded = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let non_canonical = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB";
    for arg in [zero_point, padded, non_canonical, "AAAA"] {
        assert!(
            matches!(
                identity.unwrap_stanza(&stanza(arg)),
                Some(Err(age::DecryptError::InvalidHeader))
            ),
            "{arg}"
        );
    }
    let other = age_core::format::Stanza {
        tag: "scrypt".into(),
        args: vec![],
        body,
    };
    assert!(
        identity.unwrap_stanza(&other).is_none(),
        "another kind of stanza is not ours"
    );
}
