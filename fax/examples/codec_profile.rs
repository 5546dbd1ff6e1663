//! Codec paths in a loop, for instruction counting under callgrind and
//! for timing on a noisy machine.
//!
//! - `codec_profile enc|dec mh|mr|mmr REPS PAGE.pbm...` runs one path
//!   REPS times over the pages. The pages are read and (for `dec`) encoded
//!   once before the loop. Count the path alone with callgrind's
//!   `--toggle-collect='*Bitmap::encode*'` (or `decode`): the
//!   instructions per page are the total over REPS x pages.
//! - `codec_profile time all REPS PAGE.pbm...` times each of the six
//!   paths REPS times over the pages and prints the fastest pass in ms per
//!   page, which other load on the machine disturbs least.
//! - `codec_profile bench all REPS PAGE.pbm...` runs the loops of
//!   `faxgate bench codec` REPS times and prints the median and best.

use std::time::Instant;

use faxgate_fax::pbm::read_pbm;
use faxgate_fax::{Bitmap, Coding, DecoderOptions, EncoderOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const USAGE: &str = "usage: codec_profile enc|dec|time|bench mh|mr|mmr|all REPS PAGE.pbm...";

fn coding(name: &str) -> Res<Coding> {
    Ok(match name {
        "mh" => Coding::Mh,
        "mr" => Coding::Mr { k: 4 },
        "mmr" => Coding::Mmr,
        _ => return Err(USAGE.into()),
    })
}

fn encode_all(pages: &[Bitmap], coding: Coding) -> Res<Vec<Vec<u8>>> {
    let opts = EncoderOptions::tiff(coding, pages.first().ok_or(USAGE)?.width());
    Ok(pages
        .iter()
        .map(|p| p.encode(opts.clone()))
        .collect::<Result<Vec<_>, _>>()?)
}

fn decode_all(pages: &[Bitmap], coded: &[Vec<u8>], coding: Coding) -> Res<usize> {
    let mut sum = 0;
    for (p, c) in pages.iter().zip(coded) {
        let (b, _) = Bitmap::decode(
            c,
            DecoderOptions::tiff(coding, p.width(), u64::from(p.height())),
        )?;
        sum += b.data().len();
    }
    Ok(sum)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, which, reps, files @ ..] = &args[..] else {
        return Err(USAGE.into());
    };
    let reps: usize = reps.parse()?;
    let pages: Vec<Bitmap> = files
        .iter()
        .map(|p| Ok::<_, Box<dyn std::error::Error>>(read_pbm(&std::fs::read(p)?)?))
        .collect::<Result<_, _>>()?;
    if pages.is_empty() {
        return Err(USAGE.into());
    }
    let mut sum = 0usize;
    match path.as_str() {
        "enc" => {
            let c = coding(which)?;
            for _ in 0..reps {
                sum += encode_all(&pages, c)?.len();
            }
        }
        "dec" => {
            let c = coding(which)?;
            let coded = encode_all(&pages, c)?;
            for _ in 0..reps {
                sum += decode_all(&pages, &coded, c)?;
            }
        }
        "time" => {
            let n = pages.len() as f64;
            for name in ["mh", "mr", "mmr"] {
                if which != "all" && which != name {
                    continue;
                }
                let c = coding(name)?;
                let coded = encode_all(&pages, c)?;
                let (mut enc, mut dec) = (f64::MAX, f64::MAX);
                for _ in 0..reps {
                    let t = Instant::now();
                    sum += encode_all(&pages, c)?.len();
                    enc = enc.min(t.elapsed().as_secs_f64() * 1e3 / n);
                    let t = Instant::now();
                    sum += decode_all(&pages, &coded, c)?;
                    dec = dec.min(t.elapsed().as_secs_f64() * 1e3 / n);
                }
                println!(
                    "{name}: encode {enc:.3} ms/page, decode {dec:.3} ms/page (best of {reps})"
                );
            }
        }
        "bench" => {
            // The loops of `faxgate bench codec` (20 copies, the previous
            // bitmap kept while the next is decoded), REPS times: median
            // and best pass.
            let n = (pages.len() * 20) as f64;
            for name in ["mh", "mr", "mmr"] {
                if which != "all" && which != name {
                    continue;
                }
                let c = coding(name)?;
                let opts = EncoderOptions::tiff(c, pages[0].width());
                let (mut encs, mut decs) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let t = Instant::now();
                    let mut coded = Vec::new();
                    for _ in 0..20 {
                        coded = pages
                            .iter()
                            .map(|p| p.encode(opts.clone()))
                            .collect::<Result<Vec<_>, _>>()?;
                    }
                    encs.push(t.elapsed().as_secs_f64() * 1e3 / n);
                    let t = Instant::now();
                    let mut last = None;
                    for _ in 0..20 {
                        for (p, cd) in pages.iter().zip(&coded) {
                            last = Some(Bitmap::decode(
                                cd,
                                DecoderOptions::tiff(c, p.width(), u64::from(p.height())),
                            )?);
                        }
                    }
                    decs.push(t.elapsed().as_secs_f64() * 1e3 / n);
                    sum += last.map_or(0, |(b, _)| b.data().len());
                }
                encs.sort_by(f64::total_cmp);
                decs.sort_by(f64::total_cmp);
                println!(
                    "{name}: encode median {:.3} best {:.3}, decode median {:.3} best {:.3} ms/page",
                    encs[encs.len() / 2],
                    encs[0],
                    decs[decs.len() / 2],
                    decs[0]
                );
            }
        }
        _ => return Err(USAGE.into()),
    }
    eprintln!("{sum}");
    Ok(())
}
