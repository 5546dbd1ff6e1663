//! Paper: the media a fax page is printed on, and which of a printer's
//! media suits a page best.
//!
//! A fax page is not a paper size. T.4 scans an A4 document as 1728 dots
//! over 215 mm (215.1 mm at 204 dpi) and has no page length at all, so
//! the page is printed on the paper the printer has (the IPP `media`
//! keyword, PWG 5101.1 self-describing names such as
//! `iso_a4_210x297mm`), scaled down to fit when it is larger. Pure code:
//! sizes in, sizes out.

use super::page::FaxPage;

/// The longest side of a sheet we size (ISO A0 is 841 x 1189 mm; wide
/// roll media are not sheets): a larger claim is not a sheet we render.
pub const MAX_SHEET_MM: f64 = 1500.0;

/// A sheet size: its PWG 5101.1 name and its dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// The self-describing media keyword, as the printer spells it
    /// (`iso_a4_210x297mm`, `na_letter_8.5x11in`); sent as the job's
    /// `media` and written as the PWG raster PageSizeName.
    pub name: String,
    /// (width, length) in hundredths of a millimetre, portrait (IPP's
    /// media-size x-dimension and y-dimension).
    pub size: (u32, u32),
}

impl Media {
    /// ISO A4, 210 x 297 mm: the paper of a 1728-dot (215 mm) fax page.
    pub fn a4() -> Media {
        Media::sized("iso_a4_210x297mm", (21000, 29700))
    }

    /// JIS B4, 257 x 364 mm: the paper of a 2048-dot (255 mm) fax page
    /// (T.4's B4 length, 364 mm).
    pub fn b4() -> Media {
        Media::sized("jis_b4_257x364mm", (25700, 36400))
    }

    /// ISO A3, 297 x 420 mm: the paper of a 2432-dot (303 mm) fax page.
    pub fn a3() -> Media {
        Media::sized("iso_a3_297x420mm", (29700, 42000))
    }

    fn sized(name: &str, size: (u32, u32)) -> Media {
        Media {
            name: name.to_string(),
            size,
        }
    }

    /// Parses a PWG 5101.1 self-describing media name (`CLASS_NAME_WxHmm`
    /// or `..._WxHin`). Ranges for custom and roll media
    /// (`custom_min_...`, `roll_max_...`) and names without dimensions
    /// (the legacy `iso-a4`, `na-letter`) are not sheets we can size:
    /// `None`.
    pub fn named(keyword: &str) -> Option<Media> {
        if ["custom_min_", "custom_max_", "roll_min_", "roll_max_"]
            .iter()
            .any(|p| keyword.starts_with(p))
        {
            return None;
        }
        let dims = keyword.rsplit('_').next()?;
        let (dims, unit) = if let Some(d) = dims.strip_suffix("mm") {
            (d, 100.0)
        } else if let Some(d) = dims.strip_suffix("in") {
            (d, 2540.0)
        } else {
            return None;
        };
        let (w, h) = dims.split_once('x')?;
        // Up to MAX_SHEET_MM a side: a printer that claims more (a
        // garbage or spoofed media-ready) would have us render a sheet of
        // terabytes.
        let dim = |v: &str| {
            v.parse::<f64>()
                .ok()
                .map(|v| v * unit)
                .filter(|v| v.is_finite() && *v > 0.0 && *v <= MAX_SHEET_MM * 100.0)
                .map(|v| v.round() as u32)
        };
        let (w, h) = (dim(w)?, dim(h)?);
        // Portrait, as IPP's media-size is for sheets.
        Some(Media {
            name: keyword.to_string(),
            size: (w.min(h), w.max(h)),
        })
    }

    /// The paper a fax page is made for, from its width: A4 up to 220 mm
    /// wide (T.4's 1728 dots), B4 up to 265 mm (2048 dots), A3 beyond
    /// (2432 dots). The same classes as [`FaxPage::sheet_rows`].
    pub fn for_page(page: &FaxPage) -> Media {
        match class_of(page_mm(page).0) {
            0 | 1 => Media::a4(),
            2 => Media::b4(),
            _ => Media::a3(),
        }
    }

    /// (width, length) in millimetres.
    pub fn size_mm(&self) -> (f64, f64) {
        (
            f64::from(self.size.0) / 100.0,
            f64::from(self.size.1) / 100.0,
        )
    }

    /// (width, length) in PostScript points, rounded, as PWG raster's
    /// PageSize: A4 is (595, 842), Letter (612, 792).
    pub fn size_pt(&self) -> (u32, u32) {
        let pt = |hmm: u32| (f64::from(hmm) * 72.0 / 2540.0).round() as u32;
        (pt(self.size.0), pt(self.size.1))
    }

    /// (width, height) in pixels at `dpi`, rounded: A4 at 300 dpi is
    /// 2480 x 3508.
    pub fn pixels(&self, dpi: (u32, u32)) -> (u32, u32) {
        let px =
            |hmm: u32, dpi: u32| ((f64::from(hmm) * f64::from(dpi) / 2540.0).round() as u32).max(1);
        (px(self.size.0, dpi.0), px(self.size.1, dpi.1))
    }
}

/// A page's size in millimetres: its dots over its resolution.
pub fn page_mm(page: &FaxPage) -> (f64, f64) {
    let (x, y) = page.dpi();
    (
        f64::from(page.width()) * 25.4 / f64::from(x.max(1)),
        f64::from(page.height()) * 25.4 / f64::from(y.max(1)),
    )
}

/// The paper class of a width in millimetres: 0 narrower than A4 (A5,
/// envelopes), 1 the A4 class (A4, Letter, Legal: 200 to 220 mm), 2 the
/// B4 class (up to 265 mm), 3 wider (A3, Tabloid).
fn class_of(width_mm: f64) -> u8 {
    if width_mm < 200.0 {
        0
    } else if width_mm <= 220.0 {
        1
    } else if width_mm <= 265.0 {
        2
    } else {
        3
    }
}

/// How much a page of `page_mm` must shrink to fit on `media`, portrait:
/// 1.0 when it fits as it is.
pub fn fit_scale(page_mm: (f64, f64), media: &Media) -> f64 {
    let (mw, mh) = media.size_mm();
    (mw / page_mm.0).min(mh / page_mm.1).min(1.0)
}

/// Of the media a printer has, the one a fax page of `page_mm` is best
/// printed on:
///
/// 1. paper of the page's own class (A4 class for a 1728-dot page: A4,
///    Letter, Legal), the one closest in length to the page's paper (A4
///    before Letter before Legal);
/// 2. else the narrowest wider class, which holds the page at full size
///    (A3 for a B4 page when no B4 is loaded);
/// 3. else the paper that needs the least shrinking.
///
/// Among equals the earlier candidate wins: pass the printer's default
/// first. `None` when there are no candidates.
pub fn best_media(page_mm: (f64, f64), candidates: &[Media]) -> Option<Media> {
    let page_class = class_of(page_mm.0).max(1);
    let nominal_len = match page_class {
        1 => 29700,
        2 => 36400,
        _ => 42000,
    };
    candidates
        .iter()
        .min_by_key(|m| {
            let class = class_of(m.size_mm().0);
            if class == page_class {
                (0u8, u64::from(m.size.1.abs_diff(nominal_len)), 0u64)
            } else if class > page_class {
                (
                    1,
                    u64::from(class - page_class),
                    u64::from(m.size.0) * u64::from(m.size.1),
                )
            } else {
                let shrink = 1.0 - fit_scale(page_mm, m);
                (2, (shrink * 1e6) as u64, 0)
            }
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str) -> Media {
        Media::named(name).unwrap()
    }

    #[test]
    fn self_describing_names_parse() {
        assert_eq!(m("iso_a4_210x297mm").size, (21000, 29700));
        assert_eq!(m("na_letter_8.5x11in").size, (21590, 27940));
        assert_eq!(m("na_number-10_4.125x9.5in").size, (10478, 24130));
        assert_eq!(m("om_weird_297x210mm").size, (21000, 29700), "portrait");
        assert_eq!(m("iso_a0_841x1189mm").size, (84100, 118900));
        for bad in [
            "iso-a4",
            "letter",
            "custom_min_3x5in",
            "roll_max_8x100in",
            "x_ax4mm",
            "",
            "om_huge_9999x9999in",
            "om_long_210x1501mm",
            "om_neg_-210x297mm",
        ] {
            assert_eq!(Media::named(bad), None, "{bad}");
        }
        for media in [Media::a4(), Media::b4(), Media::a3()] {
            assert_eq!(Media::named(&media.name), Some(media.clone()));
        }
        let letter = m("na_letter_8.5x11in");
        assert_eq!(Media::a4().size_pt(), (595, 842));
        assert_eq!(letter.size_pt(), (612, 792));
        assert_eq!(Media::a4().pixels((300, 300)), (2480, 3508));
        assert_eq!(letter.pixels((300, 300)), (2550, 3300));
    }

    /// A4 pages go on A4 when it is there, on Letter when that is what
    /// is loaded (not on Legal or an envelope); B4 pages on B4, else A3,
    /// else the least shrinking.
    #[test]
    fn the_best_media_for_a_fax_page() {
        let a4_page = (1728.0 * 25.4 / 204.0, 2287.0 * 25.4 / 196.0);
        let b4_page = (2048.0 * 25.4 / 204.0, 364.0);
        let a3_page = (2432.0 * 25.4 / 204.0, 420.0);
        let best = |page, names: &[&str]| {
            best_media(page, &names.iter().map(|n| m(n)).collect::<Vec<_>>()).map(|m| m.name)
        };
        let letter = "na_letter_8.5x11in";
        let legal = "na_legal_8.5x14in";
        let a4 = "iso_a4_210x297mm";
        let a3 = "iso_a3_297x420mm";
        let b4 = "jis_b4_257x364mm";
        let env = "na_number-10_4.125x9.5in";
        for (page, ready, want) in [
            (a4_page, &[letter, a4][..], a4),
            (a4_page, &[letter, env][..], letter),
            (a4_page, &[legal, letter][..], letter),
            (a4_page, &[env, legal][..], legal),
            (a4_page, &[a3, env][..], a3),
            (b4_page, &[a4, b4, a3][..], b4),
            (b4_page, &[a4, a3][..], a3),
            (b4_page, &[letter, a4][..], a4),
            (a3_page, &[b4, a4][..], b4),
            (a3_page, &[a3, b4][..], a3),
        ] {
            assert_eq!(best(page, ready).as_deref(), Some(want), "{ready:?}");
        }
        assert_eq!(best(a4_page, &[]), None);
        assert!((fit_scale(a4_page, &m(a4)) - 210.0 / 215.153).abs() < 1e-3);
        assert_eq!(fit_scale((200.0, 200.0), &m(a4)), 1.0);
    }
}
