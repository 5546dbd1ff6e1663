//! Fax pages to PDF: one page per fax page, sized to the page at its
//! resolution, each an image XObject whose stream is the page's CCITT
//! data under /CCITTFaxDecode.
//!
//! printpdf has no 1-bit image type and would expand a bilevel page to
//! 8 bits per pixel (DESIGN.md), so each page goes in as an external
//! XObject whose dictionary we write ourselves; the coded bytes are never
//! decoded or recompressed.

use std::collections::BTreeMap;

use printpdf::{
    DictItem, ExternalStream, ExternalXObject, Op, PdfDocument, PdfPage, PdfSaveOptions, Pt, Rect,
    XObject, XObjectId, XObjectTransform,
};

use super::page::{FaxPage, PageCoding};

/// Renders pages into one PDF document.
pub fn render_pdf(pages: &[FaxPage], title: &str) -> Vec<u8> {
    let mut doc = PdfDocument::new(title);
    let mut pdf_pages = Vec::with_capacity(pages.len());
    for (i, page) in pages.iter().enumerate() {
        // Our own names, not printpdf's random ones: the same pages give
        // the same bytes (golden tests, spool comparisons).
        let id = XObjectId(format!("Fax{}", i + 1));
        doc.resources
            .xobjects
            .map
            .insert(id.clone(), XObject::External(image_xobject(page)));
        let (w, h) = page.size_pt();
        let ops = vec![Op::UseXobject {
            id,
            transform: XObjectTransform {
                // The image is drawn into the unit square; scale it to the
                // page (no width/height on the XObject: no automatic scale).
                scale_x: Some(w),
                scale_y: Some(h),
                ..XObjectTransform::default()
            },
        }];
        let mut p = PdfPage::new(printpdf::Mm(0.0), printpdf::Mm(0.0), ops);
        let rect = Rect::from_wh(Pt(w), Pt(h));
        p.media_box = rect.clone();
        p.trim_box = rect.clone();
        p.crop_box = rect;
        pdf_pages.push(p);
    }
    doc.with_pages(pdf_pages);
    let opts = PdfSaveOptions {
        image_optimization: None,
        ..PdfSaveOptions::default()
    };
    let mut warnings = Vec::new();
    let bytes = doc.save(&opts, &mut warnings);
    for w in warnings {
        tracing::debug!(warning = ?w, "printpdf warning.");
    }
    bytes
}

/// The /XObject /Image dictionary and stream for one page.
fn image_xobject(page: &FaxPage) -> ExternalXObject {
    let name = |s: &str| DictItem::Name(s.as_bytes().to_vec());
    let int = |v: i64| DictItem::Int(v);
    let mut parms = BTreeMap::new();
    let (k, fill) = match page.coding() {
        PageCoding::Mh { fill } => (0, fill),
        PageCoding::Mr { k, fill } => (i64::from(k.max(1)), fill),
        PageCoding::Mmr => (-1, false),
    };
    parms.insert("K".to_string(), int(k));
    parms.insert("Columns".to_string(), int(i64::from(page.width())));
    parms.insert("Rows".to_string(), int(i64::from(page.height())));
    // Our T.4 data has an EOL before every line (TIFF Compression 3).
    if k >= 0 {
        parms.insert("EndOfLine".to_string(), DictItem::Bool(true));
    }
    if fill {
        parms.insert("EncodedByteAlign".to_string(), DictItem::Bool(true));
    }
    // BlackIs1 false (the default): 0 bits are black after decoding, which
    // is what DeviceGray needs to show black runs black.
    parms.insert("BlackIs1".to_string(), DictItem::Bool(false));

    let mut dict = BTreeMap::new();
    dict.insert("Type".to_string(), name("XObject"));
    dict.insert("Subtype".to_string(), name("Image"));
    dict.insert("Width".to_string(), int(i64::from(page.width())));
    dict.insert("Height".to_string(), int(i64::from(page.height())));
    dict.insert("ColorSpace".to_string(), name("DeviceGray"));
    dict.insert("BitsPerComponent".to_string(), int(1));
    dict.insert("Filter".to_string(), name("CCITTFaxDecode"));
    dict.insert("DecodeParms".to_string(), DictItem::Dict { map: parms });
    ExternalXObject {
        stream: ExternalStream {
            dict,
            content: page.data().to_vec(),
            compress: false,
        },
        width: None,
        height: None,
        dpi: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faxgate_fax::{Bitmap, Coding};

    #[test]
    fn ccitt_data_is_in_the_file_verbatim() {
        let mut bmp = Bitmap::new(1728, 30);
        for x in 0..1728 {
            bmp.set_pixel(x, 3, x % 3 == 0);
        }
        let page = FaxPage::from_bitmap(&bmp, (204, 196), Coding::Mmr).unwrap();
        let pdf = render_pdf(std::slice::from_ref(&page), "t");
        assert!(pdf.starts_with(b"%PDF-"));
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.contains("/CCITTFaxDecode"), "no CCITT filter");
        assert!(text.contains("/K -1"), "MMR needs K -1");
        assert!(
            pdf.windows(page.data().len()).any(|w| w == page.data()),
            "the coded page must be passed through unchanged"
        );
    }
}
