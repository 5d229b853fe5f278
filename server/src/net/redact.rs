//! Absolute paths out of messages for other machines: a load error says
//! `/home/alice/models/cogvlm/config.json`, a peer needs only `config.json`.

/// `text` with each absolute Unix path of two or more parts cut to its last part (`…/name`).
/// The server's own routes (`/v1/…`, `/api/…`) stay.
pub fn paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(at) = rest.find('/') {
        let before = &rest[..at];
        out.push_str(before);
        let starts = before.chars().last().or(prev);
        let opens = starts.is_none_or(|c| c.is_whitespace() || "\"'(=`[{".contains(c));
        let path_len = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'`),;:]}".contains(c))
            .unwrap_or(rest.len() - at);
        let path = &rest[at..at + path_len];
        let ours = path.starts_with("/v1/") || path.starts_with("/api/");
        if opens && !ours && path.trim_end_matches('/').matches('/').count() >= 2 {
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            out.push('…');
            out.push('/');
            out.push_str(last);
        } else {
            out.push_str(path);
        }
        prev = path.chars().last().or(starts);
        rest = &rest[at + path_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::paths;

    #[test]
    fn absolute_paths_keep_only_their_last_part() {
        assert_eq!(
            paths("reading /home/alice/models/x/config.json: no such file"),
            "reading …/config.json: no such file"
        );
        assert_eq!(paths("in \"/srv/m/ckpt/\""), "in \"…/ckpt\"");
        assert_eq!(
            paths("see GET /v1/models or /api/chat"),
            "see GET /v1/models or /api/chat"
        );
        assert_eq!(
            paths("a 3/4 split, http://host:1/v1/x"),
            "a 3/4 split, http://host:1/v1/x"
        );
        assert_eq!(paths("/tmp alone"), "/tmp alone");
        assert_eq!(paths("no paths here"), "no paths here");
    }
}
