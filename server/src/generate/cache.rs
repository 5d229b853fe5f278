//! What the pipeline keeps between turns: the last image's encoding and the decoding caches of recent
//! conversations, each keyed by who asked.

use std::hash::{Hash, Hasher};

use candle_core::Tensor;

use crate::model::Cache;

/// Encoded image, kept so that follow-up questions about the same image skip the vision towers.
pub(super) struct ImageCache {
    pub(super) key: u64,
    pub(super) embeds: Tensor,
    pub(super) cross: Option<Tensor>,
}

/// The decoding cache a turn ended with, kept so the next question of the same conversation only runs its
/// new tokens: the image and the earlier turns are already in it.
pub(super) struct Conversation {
    /// Who asked ([`owner_key`]): only they continue it.
    pub(super) owner: u64,
    pub(super) image: Option<u64>,
    pub(super) cache: Cache,
}

/// Conversations whose caches are kept (least recently used dropped first). Each holds its KV cache: at full
/// size ~0.5 MB per position in bf16 (~1 GB for a 2048-position chat) plus CogAgent's ~0.8 GB of encoder K/V.
pub const KEPT_CONVERSATIONS: usize = 2;

/// The caches' owner for a client id; `0` for the single user of the terminal, bench and parity runs.
///
/// Caches are per client: were they shared, one client could tell from a fast first token that another had
/// already asked the same thing about the same image.
pub(super) fn owner_key(client: &str) -> u64 {
    if client.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client.hash(&mut h);
    h.finish() | 1
}

/// The image's cache key for `owner`: the same picture from another client is another key, so neither the
/// encoding nor a conversation is shared.
pub(super) fn image_key(owner: u64, rgb: &image::RgbImage) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    (rgb.width(), rgb.height()).hash(&mut h);
    rgb.as_raw().hash(&mut h);
    h.finish()
}

pub(super) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
