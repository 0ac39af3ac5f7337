//! Coarse facts about the client.

/// A coarse device description from a User-Agent: browser family and
/// platform ("Firefox on Linux", "Chrome on Android", "curl"), never the
/// full string (which fingerprints users).
pub(crate) fn device_of(ua: &str) -> String {
    let browser = if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("OPR/") || ua.contains("Opera") {
        "Opera"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("HeadlessChrome") {
        "Headless Chrome"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else if ua.starts_with("curl/") {
        return "curl".to_owned();
    } else if ua.starts_with("grpc-") || ua.contains(" grpc-") || ua.starts_with("tonic/") {
        return "gRPC client".to_owned();
    } else if let Some(first) = ua.split(['/', ' ']).next().filter(|s| !s.is_empty()) {
        // Programmatic clients: the product token only, bounded.
        return first
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(24)
            .collect();
    } else {
        return "unknown".to_owned();
    };
    let platform = if ua.contains("Android") {
        "Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        "iOS"
    } else if ua.contains("Windows") {
        "Windows"
    } else if ua.contains("Mac OS X") || ua.contains("Macintosh") {
        "macOS"
    } else if ua.contains("CrOS") {
        "ChromeOS"
    } else if ua.contains("Linux") {
        "Linux"
    } else {
        return browser.to_owned();
    };
    format!("{browser} on {platform}")
}

#[cfg(test)]
mod tests {
    use super::device_of;

    #[test]
    fn families_are_coarse() {
        assert_eq!(
            device_of("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            "Firefox on Linux"
        );
        assert_eq!(
            device_of(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
            ),
            "Chrome on Windows"
        );
        assert_eq!(device_of("curl/8.5.0"), "curl");
        assert_eq!(device_of("reqwest/0.12"), "reqwest");
        assert_eq!(device_of(""), "unknown");
    }
}
