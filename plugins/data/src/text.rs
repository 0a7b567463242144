//! Small text helpers shared by the loaders and the linker.

/// Collapse runs of whitespace into one space and trim.
pub fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Split `"Title (1999)"` into `("Title", Some(1999))`; titles without a
/// trailing four-digit year give `(title, None)`. Whitespace is collapsed.
pub fn split_year(title: &str) -> (String, Option<u16>) {
    let t = collapse_ws(title);
    if let Some(open) = t.rfind('(')
        && t.ends_with(')')
    {
        let inner = &t[open + 1..t.len() - 1];
        if inner.len() == 4
            && inner.bytes().all(|b| b.is_ascii_digit())
            && let Ok(y) = inner.parse::<u16>()
        {
            return (t[..open].trim_end().to_string(), Some(y));
        }
    }
    (t, None)
}

/// The display name of a DBpedia URI: the last path segment without `<`, `>`,
/// with `_` as spaces (`<http://dbpedia.org/resource/Tom_Hanks>` → `Tom Hanks`).
pub fn uri_display_name(uri: &str) -> String {
    let u = uri.trim().trim_start_matches('<').trim_end_matches('>');
    let seg = u.rsplit('/').next().unwrap_or(u);
    seg.replace('_', " ")
}

/// A display name without a trailing parenthetical qualifier
/// (`Western (genre)` → `Western`, `Up (2009 film)` → `Up`).
pub fn strip_qualifier(name: &str) -> &str {
    match name.rfind(" (") {
        Some(i) if name.ends_with(')') => name[..i].trim_end(),
        _ => name,
    }
}

/// Minimal HTML unescaping of the entities seen in ReDial and IMDb text.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_qualifiers_and_names() {
        assert_eq!(split_year("Police Academy  (1984)"), ("Police Academy".into(), Some(1984)));
        assert_eq!(split_year("The Mummy "), ("The Mummy".into(), None));
        assert_eq!(split_year("Movie (Part 2)"), ("Movie (Part 2)".into(), None));
        assert_eq!(uri_display_name("<http://dbpedia.org/resource/Up_(2009_film)>"), "Up (2009 film)");
        assert_eq!(strip_qualifier("Up (2009 film)"), "Up");
        assert_eq!(strip_qualifier("Tom Hanks"), "Tom Hanks");
        assert_eq!(html_unescape("Tom &amp; Jerry &quot;x&quot;"), "Tom & Jerry \"x\"");
    }
}
