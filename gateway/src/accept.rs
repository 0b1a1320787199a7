//! The client's `Accept` header, read once for the two things it chooses:
//! a stream's framing and the shape of error answers.

use http::{header, HeaderMap};

/// The media ranges of `Accept`, lowercased and without parameters, in the
/// client's order of preference (by `q`, then as written); ranges with
/// `q=0` are dropped.
pub fn ranges(headers: &HeaderMap) -> Vec<String> {
    let mut ranges: Vec<(String, f32, usize)> = Vec::new();
    for value in headers.get_all(header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut params = item.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            if media.is_empty() {
                continue;
            }
            let q = params
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if q > 0.0 {
                let n = ranges.len();
                ranges.push((media, q, n));
            }
        }
    }
    ranges.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    ranges.into_iter().map(|(m, _, _)| m).collect()
}
