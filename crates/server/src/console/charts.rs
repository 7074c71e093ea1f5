//! SVG drawn on the server: power bars and the map of sites. Each chart carries a text
//! alternative (`role="img"` with an `aria-label`), so a screen reader reads the figures.

use super::text::{esc, power_w};

/// A horizontal bar of `value` against `limit`: green below 80 %, amber to 100 %, red over.
/// `label` is its text alternative.
pub fn bar(value: f64, limit: f64, label: &str) -> String {
    let frac = if limit > 0.0 { value / limit } else { 0.0 };
    let w = (frac.clamp(0.0, 1.0) * 200.0).round();
    let class = if frac > 1.0 + 1e-9 {
        "over"
    } else if frac >= 0.8 {
        "high"
    } else {
        "ok"
    };
    format!(
        "<svg class=\"bar\" viewBox=\"0 0 200 14\" width=\"200\" height=\"14\" role=\"img\" aria-label=\"{l}\">\
         <title>{l}</title><rect class=\"track\" width=\"200\" height=\"14\" rx=\"3\"/>\
         <rect class=\"fill {class}\" width=\"{w}\" height=\"14\" rx=\"3\"/></svg>",
        l = esc(label),
    )
}

/// A site on the map.
pub struct MapSite<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub budget_w: f64,
    pub draw_w: f64,
}

/// Where a Korean region (a province or metropolitan city, as cluster files name them) is:
/// longitude and latitude of its administrative seat.
fn region_position(region: &str) -> Option<(f64, f64)> {
    let r = region.to_ascii_lowercase().replace(['-', '_', ' '], "");
    Some(match r.as_str() {
        "seoul" => (126.98, 37.57),
        "incheon" => (126.70, 37.46),
        "gyeonggi" => (127.01, 37.27),
        "gangwon" => (127.73, 37.88),
        "chungbuk" | "northchungcheong" => (127.49, 36.64),
        "chungnam" | "southchungcheong" => (126.67, 36.66),
        "sejong" => (127.29, 36.48),
        "daejeon" => (127.38, 36.35),
        "jeonbuk" | "northjeolla" => (127.15, 35.82),
        "jeonnam" | "southjeolla" => (126.46, 34.82),
        "gwangju" => (126.85, 35.16),
        "gyeongbuk" | "northgyeongsang" => (128.73, 36.57),
        "daegu" => (128.60, 35.87),
        "gyeongnam" | "southgyeongsang" => (128.69, 35.24),
        "ulsan" => (129.31, 35.54),
        "busan" => (129.08, 35.18),
        "jeju" => (126.53, 33.50),
        _ => return None,
    })
}

/// South Korea's mainland coast, coarsely (longitude, latitude), for orientation only.
const COAST: &[(f64, f64)] = &[
    (126.1, 37.7),
    (126.7, 37.95),
    (127.5, 38.3),
    (128.35, 38.6),
    (128.6, 38.3),
    (129.0, 37.7),
    (129.4, 37.0),
    (129.45, 36.0),
    (129.35, 35.5),
    (129.1, 35.1),
    (128.6, 34.85),
    (127.7, 34.7),
    (127.3, 34.5),
    (126.6, 34.3),
    (126.3, 34.6),
    (126.4, 35.0),
    (126.5, 35.6),
    (126.7, 36.0),
    (126.5, 36.4),
    (126.2, 36.8),
    (126.6, 37.1),
    (126.6, 37.4),
];

/// Sites placed by region on a sketch of Korea, each a circle sized by its budget and filled
/// in proportion to its draw; sites of other regions in a row below. `label` describes it.
pub fn site_map(sites: &[MapSite], label: &str, other_regions: &str) -> String {
    const W: f64 = 360.0;
    const H: f64 = 420.0;
    // Longitude 125.8–129.8, latitude 33.0–38.8 onto the upper 360 × 360.
    let xy = |lon: f64, lat: f64| {
        (
            (lon - 125.8) / 4.0 * 300.0 + 30.0,
            (38.8 - lat) / 5.8 * 340.0 + 10.0,
        )
    };
    let mut out = format!(
        "<svg class=\"map\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{l}\"><title>{l}</title>",
        l = esc(label)
    );
    let coast: Vec<String> = COAST
        .iter()
        .map(|&(lon, lat)| {
            let (x, y) = xy(lon, lat);
            format!("{x:.0},{y:.0}")
        })
        .collect();
    out.push_str(&format!(
        "<polygon class=\"land\" points=\"{}\"/>",
        coast.join(" ")
    ));
    let (jx, jy) = xy(126.55, 33.38);
    out.push_str(&format!(
        "<ellipse class=\"land\" cx=\"{jx:.0}\" cy=\"{jy:.0}\" rx=\"22\" ry=\"9\"/>"
    ));
    let max_budget = sites.iter().map(|s| s.budget_w).fold(1.0, f64::max);
    let mut elsewhere = 0;
    for (i, s) in sites.iter().enumerate() {
        let r = 10.0 + 22.0 * (s.budget_w / max_budget).sqrt();
        let (x, y) = match region_position(s.region) {
            // Several sites in one region: a little apart.
            Some((lon, lat)) => {
                let (x, y) = xy(lon, lat);
                let same = sites[..i].iter().filter(|o| o.region == s.region).count() as f64;
                (x + same * 2.2 * r, y)
            }
            None => {
                elsewhere += 1;
                (30.0 + (elsewhere - 1) as f64 * 70.0, H - 35.0)
            }
        };
        let frac = if s.budget_w > 0.0 {
            (s.draw_w / s.budget_w).clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The filled part: a horizontal band from the bottom of the circle up to `frac`.
        let fill_top = y + r - 2.0 * r * frac;
        let id = format!("clip-{i}");
        out.push_str(&format!(
            "<g class=\"site\"><clipPath id=\"{id}\"><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\"/></clipPath>\
             <circle class=\"site-budget\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r:.1}\"/>\
             <rect class=\"site-draw\" clip-path=\"url(#{id})\" x=\"{:.1}\" y=\"{fill_top:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text class=\"small\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} / {}</text></g>",
            x - r,
            2.0 * r,
            (y + r) - fill_top,
            y + r + 14.0,
            esc(s.name),
            y + r + 27.0,
            esc(&power_w(s.draw_w)),
            esc(&power_w(s.budget_w)),
        ));
    }
    if elsewhere > 0 {
        out.push_str(&format!(
            "<text class=\"small\" x=\"10\" y=\"{:.0}\">{}</text>",
            H - 75.0,
            esc(other_regions)
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_say_their_figures_and_colour_by_how_full() {
        let b = bar(90.0, 100.0, "pohang: 90 of 100");
        assert!(b.contains("aria-label=\"pohang: 90 of 100\""));
        assert!(b.contains("class=\"fill high\" width=\"180\""));
        assert!(bar(120.0, 100.0, "x").contains("fill over\" width=\"200\""));
        assert!(bar(10.0, 0.0, "x").contains("width=\"0\""));
    }

    #[test]
    fn known_regions_go_on_the_map_and_others_below_it() {
        let m = site_map(
            &[
                MapSite {
                    name: "pohang",
                    region: "gyeongbuk",
                    budget_w: 2e7,
                    draw_w: 1e7,
                },
                MapSite {
                    name: "<x>",
                    region: "mars",
                    budget_w: 1e6,
                    draw_w: 0.0,
                },
            ],
            "map",
            "other regions",
        );
        assert!(m.contains(">pohang<"));
        assert!(m.contains("&lt;x&gt;"), "names are escaped");
        assert!(m.contains("other regions"));
    }
}
