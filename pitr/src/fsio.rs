//! File writes shaped for the page cache.
//!
//! Linux 6.x caches a file in folios sized by the writes that fill it. A write of 256 KiB or
//! more asks the kernel for a large folio (order 6 and up), and on a virtual machine that hands
//! free memory back to its host (virtio free page reporting) every such folio is memory the host
//! must fault in again: measured here, 16 MiB written in 1 MiB or larger pieces took 40–55 ms
//! once a few hundred MB had been written, in 128 KiB pieces 4–5 ms every time
//! (bench/findings.md). Large folios also make every later 8 KiB write back a whole folio. So
//! pitr writes files in pieces of at most [`WRITE_PIECE`]; restored data files, which PostgreSQL
//! rewrites page by page, are written one page at a time (`backup::restore`).

use std::io::{self, Write};

/// The largest write pitr hands the kernel: 128 KiB, below the order-6 folios that turn slow.
pub const WRITE_PIECE: usize = 128 << 10;

/// Writes all of `bytes` to `out` in pieces of at most [`WRITE_PIECE`].
pub fn write_in_pieces(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    bytes.chunks(WRITE_PIECE).try_for_each(|piece| out.write_all(piece))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes it receives, and keeps what they carry.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes.push(buf.len());
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn no_write_is_larger_than_a_piece_and_nothing_is_lost() {
        let data: Vec<u8> = (0..WRITE_PIECE * 3 + 17).map(|i| i as u8).collect();
        let mut out = Recorder::default();
        write_in_pieces(&mut out, &data).unwrap();
        assert_eq!(out.writes, [WRITE_PIECE, WRITE_PIECE, WRITE_PIECE, 17]);
        assert_eq!(out.bytes, data);
    }
}
