//! Parsing and checking of flag values. Each parser returns a one-line message on error;
//! clap prints it and exits with status 2.

use std::path::Path;
use std::time::Duration;

use palisade_client::Quota;

/// A duration: a number and a unit (`ms`, `s`, `m`, `h`), e.g. `500ms`, `10s`, `2m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a duration: expected a number and a unit, like 10s or 500ms"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: the number is too large"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "" => return Err(format!("{s:?} has no unit: write {n}s or {n}ms")),
        other => return Err(format!("{s:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("{s:?} is longer than a week"));
    }
    Ok(d)
}

/// A positive duration.
pub(crate) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// A count of connections or requests in flight: at most 100,000 (tokio's semaphore, and any
/// machine's sockets, end well before `usize::MAX`).
pub(crate) fn count(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("{s:?} is not a whole number: {e}"))?;
    if n > 100_000 {
        return Err(format!("{s:?} is more than 100,000"));
    }
    Ok(n)
}

/// A rate such as `100/min`, `10/s`, `5000/h`, `3/250ms`.
pub(crate) fn rate(s: &str) -> Result<Quota, String> {
    s.parse::<Quota>().map_err(|e| format!("{s:?}: {e}"))
}

/// An inclusive id range `FIRST..LAST` (`1..1000` is 1 through 1000).
pub(crate) fn id_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not a range: write FIRST..LAST, like 1..1000"))?;
    let b = b.strip_prefix('=').unwrap_or(b);
    let first: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {a:?} is not a whole number"))?;
    let last: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {b:?} is not a whole number"))?;
    if last < first {
        return Err(format!("{s:?} is empty: the last id is below the first"));
    }
    if last - first >= 100_000_000 {
        return Err(format!("{s:?} has more than 100,000,000 ids"));
    }
    Ok((first, last))
}

/// A header `Name: value`.
pub(crate) fn header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header: write 'Name: value'"))?;
    let name = http::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = http::HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of header {name} has characters a header cannot carry"))?;
    Ok((name, value))
}

/// A URL template: absolute `http(s)` with `{id}` somewhere in the path or query (not in the
/// host: the rate limit, the breaker and the connections are per host, so one host per id would
/// make `--rate` a rate per id).
pub(crate) fn template(s: &str) -> Result<String, String> {
    if !s.contains("{id}") {
        return Err(format!(
            "{s:?} has no {{id}} placeholder, e.g. https://api.example.com/items/{{id}}"
        ));
    }
    let probe = |id: &str| -> Result<http::Uri, String> {
        s.replace("{id}", id)
            .parse::<http::Uri>()
            .map_err(|e| format!("{s:?} is not a valid URL: {e}"))
    };
    let uri = probe("0")?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.authority().is_some() => {}
        _ => {
            return Err(format!(
                "{s:?} must start with http:// or https:// and name a host"
            ))
        }
    }
    if probe("1")?.authority() != uri.authority() {
        return Err(format!(
            "{s:?}: {{id}} must be in the path or the query, not in the host"
        ));
    }
    Ok(s.to_owned())
}

/// The characters of an id left as they are in its URL: RFC 3986's unreserved ones. Every
/// other byte is percent-encoded, so an id is one path segment or one query value whatever it
/// contains (`a&b` is not two query parameters, `é` is valid in a URL).
const ID_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URL of `id`: the template with `{id}` replaced by the id, percent-encoded.
pub(crate) fn url_for(template: &str, id: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(id, ID_KEEP).to_string();
    template.replace("{id}", &encoded)
}

/// Ids from a file, one per line; blank lines and `#` comments are skipped, and an id listed
/// twice is fetched once. Returns the ids in file order and how many repeats were dropped.
pub(crate) fn ids_from_file(path: &Path) -> Result<(Vec<String>, usize), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read ids from {}: {e}", path.display()))?;
    // A byte-order mark (some editors write one) is not part of the first id.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    let mut repeats = 0;
    for id in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if id
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
        {
            return Err(format!(
                "{}: id {id:?} contains a space, '/', '?' or '#'",
                path.display()
            ));
        }
        if seen.insert(id) {
            ids.push(id.to_owned());
        } else {
            repeats += 1;
        }
    }
    if ids.is_empty() {
        return Err(format!("{} has no ids", path.display()));
    }
    Ok((ids, repeats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_into_the_url() {
        let t = "http://a.example/items/{id}?v={id}";
        assert_eq!(url_for(t, "42"), "http://a.example/items/42?v=42");
        assert_eq!(
            url_for(t, "A-z_0.9~"),
            "http://a.example/items/A-z_0.9~?v=A-z_0.9~"
        );
        // One query value, not two parameters; data, not an escape.
        assert_eq!(
            url_for("http://a.example/q?id={id}&x=1", "a&b=c"),
            "http://a.example/q?id=a%26b%3Dc&x=1"
        );
        assert_eq!(url_for(t, "50%"), "http://a.example/items/50%25?v=50%25");
        // Not ASCII: valid in a URL once encoded (it was refused before).
        let u = url_for(t, "é");
        assert_eq!(u, "http://a.example/items/%C3%A9?v=%C3%A9");
        assert!(u.parse::<http::Uri>().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(duration("10").unwrap_err().contains("no unit"));
        assert!(duration("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(duration("s").unwrap_err().contains("not a duration"));
        assert!(positive_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(duration("99999999999999999999s")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn ranges() {
        assert_eq!(id_range("1..1000"), Ok((1, 1000)));
        assert_eq!(id_range("5..=5"), Ok((5, 5)));
        assert!(id_range("10..1").unwrap_err().contains("empty"));
        assert!(id_range("a..3").unwrap_err().contains("whole number"));
        assert!(id_range("7").unwrap_err().contains("FIRST..LAST"));
    }

    #[test]
    fn headers_and_templates() {
        let (n, v) = header("Authorization: Bearer x").unwrap();
        assert_eq!(
            (n.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer x")
        );
        assert!(header("nocolon").unwrap_err().contains("Name: value"));
        assert!(header("bad name: x")
            .unwrap_err()
            .contains("not a valid header name"));
        assert!(template("https://a.example/items/{id}").is_ok());
        assert!(template("https://a.example/items")
            .unwrap_err()
            .contains("{id}"));
        assert!(template("/items/{id}").unwrap_err().contains("http://"));
        assert!(template("https://a.example/items?id={id}").is_ok());
        assert!(template("https://{id}.example/items")
            .unwrap_err()
            .contains("not in the host"));
        assert!(template("https://a.example:80{id}/items")
            .unwrap_err()
            .contains("not in the host"));
        assert!(rate("10/parsec").is_err());
        assert!(rate("100/min").is_ok());
    }
}
