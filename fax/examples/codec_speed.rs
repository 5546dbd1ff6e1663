//! Rough codec timing on PBM pages: `codec_speed PAGE.pbm...`.
//!
//! Prints milliseconds per page for encoding and decoding MH, MR and MMR
//! TIFF strips. The benchmark harness proper (against tiffcp, in
//! BENCHMARKS.md) is still to come.

use std::time::Instant;

use faxgate_fax::pbm::read_pbm;
use faxgate_fax::tiff::EncodedPage;
use faxgate_fax::{Bitmap, Coding, DecoderOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pages: Vec<Bitmap> = std::env::args()
        .skip(1)
        .map(|p| Ok::<_, Box<dyn std::error::Error>>(read_pbm(&std::fs::read(p)?)?))
        .collect::<Result<_, _>>()?;
    if pages.is_empty() {
        return Err("usage: codec_speed PAGE.pbm...".into());
    }
    let reps = 20;
    for (coding, name) in [
        (Coding::Mh, "MH"),
        (Coding::Mr { k: 4 }, "MR"),
        (Coding::Mmr, "MMR"),
    ] {
        let opts = EncodedPage::encoder_options(coding, pages[0].width(), false);
        let t = Instant::now();
        let mut coded = Vec::new();
        for _ in 0..reps {
            coded = pages
                .iter()
                .map(|p| p.encode(opts.clone()))
                .collect::<Result<Vec<_>, _>>()?;
        }
        let enc = t.elapsed().as_secs_f64() * 1000.0 / (reps * pages.len()) as f64;
        let t = Instant::now();
        for _ in 0..reps {
            for (p, c) in pages.iter().zip(&coded) {
                let (b, _) = Bitmap::decode(
                    c,
                    DecoderOptions::tiff(coding, p.width(), u64::from(p.height())),
                )?;
                assert_eq!(&b, p);
            }
        }
        let dec = t.elapsed().as_secs_f64() * 1000.0 / (reps * pages.len()) as f64;
        let bytes: usize = coded.iter().map(Vec::len).sum();
        println!("{name}: encode {enc:.3} ms/page, decode {dec:.3} ms/page, {bytes} bytes");
    }
    Ok(())
}
