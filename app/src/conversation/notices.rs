//! What the user is told when another tab holds or replaced the stored conversations (translated in `i18n`).

pub const BLOCKED: &str =
    "Close this page's other tabs: one of them holds the stored conversations open at an \
    older version, and this tab waits for it to let go.";
pub const REPLACED: &str =
    "Another tab upgraded the stored conversations to a newer version: reload this page \
    to keep saving.";
