//! Fax pages to PDF: one page per fax page, sized to the page at its
//! resolution, each an image XObject whose stream is the page's CCITT
//! data under /CCITTFaxDecode.
//!
//! The file is written as it goes: each page's objects go to the output
//! as soon as they are made, and only their offsets are kept for the
//! cross-reference table, so a document of any length takes one page's
//! worth of memory beyond its input. pdf-writer serialises the objects
//! (dictionaries, names, the title's string escaping); this file writes
//! the header, the cross-reference table and the trailer itself, because
//! pdf-writer (like printpdf) builds the whole file in one buffer before
//! it writes any of it. printpdf also has no 1-bit image type (DESIGN.md).
//! The coded bytes are never decoded or recompressed, and the same pages
//! give the same bytes (no dates, no random ids).

use std::io::{self, Write};

use pdf_writer::writers::{Catalog, DocumentInfo, Page, Pages};
use pdf_writer::{Chunk, Content, Filter, Finish as _, Name, Rect, Ref, Settings, TextStr};

use faxgate_fax::FaxError;

use super::page::{FaxPage, PageCoding};

/// The catalog, the page tree and the document information; the pages'
/// objects follow, three per page.
const CATALOG: i32 = 1;
const PAGE_TREE: i32 = 2;
const INFO: i32 = 3;
const FIRST_PAGE_OBJECT: i32 = 4;

/// Renders pages into one PDF document in memory. Writing to memory
/// cannot fail; a document of more pages than PDF object numbers can
/// count (hundreds of millions) is refused.
pub fn render_pdf(pages: &[FaxPage], title: &str) -> Result<Vec<u8>, FaxError> {
    let mut out = Vec::new();
    write_pdf(pages, title, &mut out).map_err(|e| FaxError::Geometry {
        reason: e.to_string(),
    })?;
    Ok(out)
}

/// Writes pages as one PDF document to `out`, page by page; returns the
/// number of bytes written.
pub fn write_pdf<'p, W: Write>(
    pages: impl IntoIterator<Item = &'p FaxPage>,
    title: &str,
    out: W,
) -> io::Result<u64> {
    let mut w = Counting { inner: out, at: 0 };
    // The binary comment tells transfer programs the file is binary.
    w.write_all(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n")?;
    // offsets[n - 1] is where object n starts.
    let mut offsets: Vec<u64> = vec![0; (FIRST_PAGE_OBJECT - 1) as usize];
    let mut kids = Vec::new();
    let settings = Settings { pretty: false };
    for (i, page) in pages.into_iter().enumerate() {
        let index = i32::try_from(i)
            .ok()
            .filter(|i| *i < (i32::MAX - FIRST_PAGE_OBJECT) / 3)
            .ok_or_else(|| io::Error::other("too many pages for one PDF"))?;
        let image = Ref::new(FIRST_PAGE_OBJECT + 3 * index);
        let content = Ref::new(image.get() + 1);
        let page_ref = Ref::new(image.get() + 2);
        // Our own names: the same pages give the same bytes.
        let name = format!("Fax{}", index + 1);

        let mut chunk = Chunk::with_settings(settings);
        image_xobject(&mut chunk, image, page);
        emit(&mut w, &mut offsets, image, &chunk)?;

        let (width, height) = page.size_pt();
        let mut ops = Content::new();
        // The image is drawn into the unit square; scale it to the page.
        ops.save_state()
            .transform([width, 0.0, 0.0, height, 0.0, 0.0])
            .x_object(Name(name.as_bytes()))
            .restore_state();
        let ops = ops.finish();
        let mut chunk = Chunk::with_settings(settings);
        chunk.stream(content, &ops);
        emit(&mut w, &mut offsets, content, &chunk)?;

        let mut chunk = Chunk::with_settings(settings);
        let mut p = chunk.indirect(page_ref).start::<Page>();
        p.parent(Ref::new(PAGE_TREE));
        p.media_box(Rect::new(0.0, 0.0, width, height));
        p.resources().x_objects().pair(Name(name.as_bytes()), image);
        p.contents(content);
        p.finish();
        emit(&mut w, &mut offsets, page_ref, &chunk)?;
        kids.push(page_ref);
    }

    let mut chunk = Chunk::with_settings(settings);
    let count = i32::try_from(kids.len()).unwrap_or(i32::MAX);
    chunk
        .indirect(Ref::new(PAGE_TREE))
        .start::<Pages>()
        .kids(kids.iter().copied())
        .count(count);
    emit(&mut w, &mut offsets, Ref::new(PAGE_TREE), &chunk)?;

    let mut chunk = Chunk::with_settings(settings);
    chunk
        .indirect(Ref::new(CATALOG))
        .start::<Catalog>()
        .pages(Ref::new(PAGE_TREE));
    emit(&mut w, &mut offsets, Ref::new(CATALOG), &chunk)?;

    let mut chunk = Chunk::with_settings(settings);
    let producer = format!("faxgate {}", env!("CARGO_PKG_VERSION"));
    chunk
        .indirect(Ref::new(INFO))
        .start::<DocumentInfo>()
        .title(TextStr(title))
        .producer(TextStr(&producer));
    emit(&mut w, &mut offsets, Ref::new(INFO), &chunk)?;

    // The classic cross-reference table: every entry exactly 20 bytes.
    let xref = w.at;
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1);
    for offset in &offsets {
        table.push_str(&format!("{offset:010} 00000 n \n"));
    }
    w.write_all(table.as_bytes())?;
    w.write_all(
        format!(
            "trailer\n<</Size {} /Root {CATALOG} 0 R /Info {INFO} 0 R>>\nstartxref\n{xref}\n%%EOF\n",
            offsets.len() + 1
        )
        .as_bytes(),
    )?;
    w.flush()?;
    Ok(w.at)
}

/// Writes one object's chunk and records where the object starts.
fn emit<W: Write>(
    w: &mut Counting<W>,
    offsets: &mut Vec<u64>,
    id: Ref,
    chunk: &Chunk,
) -> io::Result<()> {
    let n = id.get() as usize;
    if offsets.len() < n {
        offsets.resize(n, 0);
    }
    offsets[n - 1] = w.at;
    w.write_all(chunk.as_bytes())
}

/// The /XObject /Image dictionary and stream for one page.
fn image_xobject(chunk: &mut Chunk, id: Ref, page: &FaxPage) {
    let (k, fill) = match page.coding() {
        PageCoding::Mh { fill } => (0, fill),
        PageCoding::Mr { k, fill } => (i32::try_from(k.max(1)).unwrap_or(i32::MAX), fill),
        PageCoding::Mmr => (-1, false),
    };
    let width = i32::try_from(page.width()).unwrap_or(i32::MAX);
    let height = i32::try_from(page.height()).unwrap_or(i32::MAX);
    let mut image = chunk.image_xobject(id, page.data());
    image.width(width);
    image.height(height);
    image.color_space().device_gray();
    image.bits_per_component(1);
    image.filter(Filter::CcittFaxDecode);
    let mut parms = image.decode_parms();
    parms.k(k);
    parms.columns(width);
    parms.rows(height);
    // Our T.4 data has an EOL before every line (TIFF Compression 3).
    if k >= 0 {
        parms.end_of_line(true);
    }
    if fill {
        parms.encoded_byte_align(true);
    }
    // BlackIs1 false (the default): 0 bits are black after decoding, which
    // is what DeviceGray needs to show black runs black.
    parms.black_is_1(false);
}

/// A writer that counts what goes through it, for the offsets.
struct Counting<W> {
    inner: W,
    at: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_fax::{Bitmap, Coding};

    fn sample(coding: Coding) -> FaxPage {
        let mut bmp = Bitmap::new(1728, 30);
        for x in 0..1728 {
            bmp.set_pixel(x, 3, x % 3 == 0);
        }
        FaxPage::from_bitmap(&bmp, (204, 196), coding).unwrap()
    }

    #[test]
    fn ccitt_data_is_in_the_file_verbatim() {
        let page = sample(Coding::Mmr);
        let pdf = render_pdf(std::slice::from_ref(&page), "t").unwrap();
        assert!(pdf.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("/CCITTFaxDecode"), "no CCITT filter");
        assert!(text.contains("/K -1"), "MMR needs K -1");
        assert!(
            pdf.windows(page.data().len()).any(|w| w == page.data()),
            "the coded page must be passed through unchanged"
        );
    }

    /// Every cross-reference entry points at its object's `N 0 obj`, and
    /// startxref at the table: what a reader that does not repair files
    /// relies on.
    #[test]
    fn xref_offsets_point_at_their_objects() {
        let pages = vec![
            sample(Coding::Mh),
            sample(Coding::Mr { k: 4 }),
            sample(Coding::Mmr),
        ];
        let pdf = render_pdf(&pages, "a (title) with \\ and é").unwrap();
        let text = String::from_utf8_lossy(&pdf);
        let start: usize = text
            .rsplit("startxref\n")
            .next()
            .and_then(|s| s.lines().next())
            .and_then(|s| s.parse().ok())
            .expect("startxref");
        assert!(
            pdf[start..].starts_with(b"xref\n0 13\n"),
            "{:?}",
            &text[start..start + 20]
        );
        let table = &pdf[start + b"xref\n0 13\n".len()..];
        assert_eq!(&table[..20], b"0000000000 65535 f \n");
        for n in 1..13usize {
            let entry = std::str::from_utf8(&table[n * 20..n * 20 + 20]).unwrap();
            assert!(entry.ends_with(" 00000 n \n"), "{entry:?}");
            let at: usize = entry[..10].parse().unwrap();
            let head = format!("{n} 0 obj");
            assert!(pdf[at..].starts_with(head.as_bytes()), "object {n} at {at}");
        }
        assert!(text.contains("/Size 13"));
        assert!(pdf.ends_with(b"%%EOF\n"));
    }

    /// Written in pieces to a writer or at once to a Vec: the same bytes,
    /// and the count returned is the length.
    #[test]
    fn streamed_output_equals_the_buffered_one() {
        struct Dribble(Vec<u8>);
        impl Write for Dribble {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(7);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let pages = vec![sample(Coding::Mmr), sample(Coding::Mh)];
        let whole = render_pdf(&pages, "x").unwrap();
        let mut d = Dribble(Vec::new());
        let n = write_pdf(&pages, "x", &mut d).unwrap();
        assert_eq!(d.0, whole);
        assert_eq!(n, whole.len() as u64);
    }
}
