//! The images the page uploads (the `upload_image` server function), kept for the chat requests
//! that name them by id: the page sends a conversation's image once, and its socket frames carry
//! only text.
//!
//! An id works only for the client that uploaded it. Each client keeps its latest few images, and
//! all clients together up to a total size; past either bound the least recently used go first. A
//! request naming a forgotten image gets [`ErrorKind::UploadMissing`], on which the page uploads
//! the image again.

use crate::engine::limits::{check_image_bytes, Limits};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use protocol::{Error, ErrorKind, ImageData, UploadRef};
use std::collections::HashMap;
use std::sync::Mutex;

/// The upload server function's path (`app::api::upload_image`).
pub const UPLOAD_PATH: &str = "/api/upload_image";

/// Room in an upload's body besides the file: the form's boundaries and field headers.
const FORM_OVERHEAD: usize = 64 << 10;

/// Middleware: refuses an upload that is not a multipart form with a boundary before the
/// server-function runtime reads it (it panics on one), and caps its body at the file limit (the
/// multipart parser buffers a body whose boundary never comes, without a bound of its own).
pub async fn refuse_malformed(max_upload: usize, req: Request, next: Next) -> Response {
    if req.uri().path() != UPLOAD_PATH {
        return next.run(req).await;
    }
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(multer::parse_boundary);
    if !matches!(boundary, Some(Ok(_))) {
        let message = "bad request: an upload is a multipart/form-data form (with a boundary) \
                       holding the file in its `image` field";
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let cap = max_upload.saturating_add(FORM_OVERHEAD);
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > cap as u64) {
        let message = format!(
            "the upload is larger than {:.1} MB, the limit",
            max_upload as f64 / 1e6
        );
        // 400 with the words the upload function itself uses for a file over the limit.
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let (parts, body) = req.into_parts();
    let mut seen = 0usize;
    let capped = body.into_data_stream().map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len();
        if seen > cap {
            return Err(axum::Error::new(format!(
                "the upload is larger than {:.1} MB, the limit",
                max_upload as f64 / 1e6
            )));
        }
        Ok(chunk)
    });
    next.run(Request::from_parts(parts, Body::from_stream(capped)))
        .await
}

/// Images kept per client: a few conversations' worth.
const PER_CLIENT: usize = 8;
/// Images kept, all clients together: clients are cheap to make (a new cookie), so the count is
/// bounded too, not only the bytes.
const MAX_ENTRIES: usize = 256;
/// Images kept per address on a shared server, all its client ids together (a peer can make new
/// ids at will).
const PER_ADDRESS: usize = 32;
/// A file name longer than this is cut (it is echoed in messages and kept with the image).
pub const MAX_NAME_CHARS: usize = 128;

pub struct Uploads {
    limits: Limits,
    /// Bytes of encoded images kept, all clients together.
    max_total_bytes: usize,
    /// Whether [`PER_ADDRESS`] applies.
    per_address: bool,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    images: HashMap<String, Kept>,
    /// Ticks on every upload and use: the order of "least recently used".
    clock: u64,
    total_bytes: usize,
}

struct Kept {
    client: String,
    image: ImageData,
    bytes: usize,
    used: u64,
}

impl Uploads {
    /// Room for 16 images at the upload limit (at least 64 MB).
    pub fn new(limits: Limits) -> Self {
        let max_total_bytes = limits.max_upload_bytes.saturating_mul(16).max(64_000_000);
        Self::with_capacity(limits, max_total_bytes)
    }

    pub fn with_capacity(limits: Limits, max_total_bytes: usize) -> Self {
        Self {
            limits,
            max_total_bytes,
            per_address: false,
            store: Mutex::default(),
        }
    }

    /// Holds each address to [`PER_ADDRESS`] images (shared servers).
    pub fn per_address(mut self, on: bool) -> Self {
        self.per_address = on;
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Keeps `bytes` for `client` after the engine's checks on an image file (size, format,
    /// pixel count, read from the header).
    pub fn put(&self, client: &str, name: String, bytes: Vec<u8>) -> Result<UploadRef, Error> {
        let name: String = name.chars().take(MAX_NAME_CHARS).collect();
        check_image_bytes(&name, &bytes, &self.limits)
            .map_err(|e| Error::bad_input(format!("{e:#}")))?;
        let id = super::access::new_token();
        let mut store = self.lock();
        store.clock += 1;
        // The file's bytes as they came, shared with every request that names the upload.
        let kept = Kept {
            client: client.to_string(),
            bytes: bytes.len(),
            image: ImageData {
                name: name.clone(),
                bytes: protocol::ImageBytes::new(bytes),
            },
            used: store.clock,
        };
        store.total_bytes += kept.bytes;
        store.images.insert(id.clone(), kept);
        store.evict(client, self.max_total_bytes);
        if self.per_address {
            store.evict_address(client);
        }
        Ok(UploadRef { id, name })
    }

    /// The image `upload` names, if `client` uploaded it and it is still kept.
    pub fn get(&self, client: &str, upload: &UploadRef) -> Result<ImageData, Error> {
        let mut store = self.lock();
        store.clock += 1;
        let now = store.clock;
        match store
            .images
            .get_mut(&upload.id)
            .filter(|k| k.client == client)
        {
            Some(kept) => {
                kept.used = now;
                Ok(kept.image.clone())
            }
            None => Err(Error::new(
                ErrorKind::UploadMissing,
                format!(
                    "the image {:?} is no longer on the server (it restarted, or made room for newer \
                     uploads): upload it again",
                    upload.name
                ),
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // The store stays consistent between statements: a panic elsewhere cannot leave it half
        // updated.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address part of a client key (`client:<id>@<address>`).
fn address_of(client: &str) -> &str {
    client.rsplit_once('@').map_or(client, |(_, a)| a)
}

impl Store {
    /// Drops the oldest images of `client`'s address past [`PER_ADDRESS`].
    fn evict_address(&mut self, client: &str) {
        let address = address_of(client);
        let mut mine: Vec<(u64, String)> = self
            .images
            .iter()
            .filter(|(_, k)| address_of(&k.client) == address)
            .map(|(id, k)| (k.used, id.clone()))
            .collect();
        if mine.len() <= PER_ADDRESS {
            return;
        }
        mine.sort();
        for (_, id) in &mine[..mine.len() - PER_ADDRESS] {
            if let Some(kept) = self.images.remove(id) {
                self.total_bytes -= kept.bytes;
            }
        }
    }

    /// Drops `client`'s oldest past [`PER_CLIENT`], then anyone's oldest past `max_total_bytes`
    /// or [`MAX_ENTRIES`] (never the image just kept).
    fn evict(&mut self, client: &str, max_total_bytes: usize) {
        loop {
            let mine = self.images.values().filter(|k| k.client == client).count();
            let over = (self.total_bytes > max_total_bytes || self.images.len() > MAX_ENTRIES)
                && self.images.len() > 1;
            if mine <= PER_CLIENT && !over {
                return;
            }
            let oldest = self
                .images
                .iter()
                .filter(|(_, k)| over || k.client == client)
                .min_by_key(|(_, k)| k.used)
                .map(|(id, _)| id.clone());
            let Some(kept) = oldest.and_then(|id| self.images.remove(&id)) else {
                return;
            };
            self.total_bytes -= kept.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::new_rgb8(w, h)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn an_upload_is_kept_for_its_client_only() {
        let uploads = Uploads::new(Limits::default());
        let r = uploads.put("client:a", "x.png".into(), png(4, 3)).unwrap();
        let image = uploads.get("client:a", &r).unwrap();
        assert_eq!(image.name, "x.png");
        let err = uploads.get("client:b", &r).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UploadMissing);
        assert!(err.message.contains("upload it again"), "{}", err.message);
    }

    #[test]
    fn a_file_the_engine_refuses_is_refused_at_upload() {
        let uploads = Uploads::new(Limits::default());
        let err = uploads
            .put("c", "notes.png".into(), b"not a picture".to_vec())
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadInput);
        assert!(err.message.contains("not a PNG"), "{}", err.message);
        let empty = uploads.put("c", "e.png".into(), Vec::new()).unwrap_err();
        assert!(empty.message.contains("empty"), "{}", empty.message);
    }

    #[test]
    fn the_store_is_bounded_by_entries_and_names_are_cut() {
        let uploads = Uploads::new(Limits::default());
        let long = format!("{}.png", "n".repeat(1000));
        let r = uploads.put("c0", long, png(2, 2)).unwrap();
        assert_eq!(r.name.chars().count(), MAX_NAME_CHARS);
        // One image per client, as from clients rotating their cookie.
        for i in 0..MAX_ENTRIES + 10 {
            uploads
                .put(&format!("c{i}"), "x.png".into(), png(2, 2))
                .unwrap();
        }
        assert_eq!(uploads.lock().images.len(), MAX_ENTRIES);
    }

    #[test]
    fn new_ids_from_one_address_share_its_room() {
        let uploads = Uploads::new(Limits::default()).per_address(true);
        let other = uploads
            .put("client:x@10.0.0.2", "o.png".into(), png(2, 2))
            .unwrap();
        for i in 0..PER_ADDRESS + 5 {
            let client = format!("client:{i}@10.0.0.9");
            uploads.put(&client, "x.png".into(), png(2, 2)).unwrap();
        }
        let store = uploads.lock();
        let from_9 = store
            .images
            .values()
            .filter(|k| k.client.ends_with("@10.0.0.9"));
        assert_eq!(from_9.count(), PER_ADDRESS);
        drop(store);
        uploads.get("client:x@10.0.0.2", &other).unwrap();
    }

    #[test]
    fn stored_bytes_count_the_files() {
        let one = png(8, 8);
        let stored = one.len();
        let uploads = Uploads::with_capacity(Limits::default(), 2 * stored);
        for i in 0..3 {
            uploads
                .put(&format!("c{i}"), "x.png".into(), one.clone())
                .unwrap();
        }
        let store = uploads.lock();
        assert_eq!((store.images.len(), store.total_bytes), (2, 2 * stored));
    }

    #[test]
    fn the_least_recently_used_go_first() {
        let one = png(8, 8).len();
        // Room for three images.
        let uploads = Uploads::with_capacity(Limits::default(), 3 * one);
        let a = uploads.put("c1", "a.png".into(), png(8, 8)).unwrap();
        let b = uploads.put("c2", "b.png".into(), png(8, 8)).unwrap();
        let c = uploads.put("c3", "c.png".into(), png(8, 8)).unwrap();
        uploads.get("c1", &a).unwrap(); // a is now more recent than b
        let d = uploads.put("c4", "d.png".into(), png(8, 8)).unwrap();
        assert!(
            uploads.get("c2", &b).is_err(),
            "b was the least recently used"
        );
        for (client, r) in [("c1", &a), ("c3", &c), ("c4", &d)] {
            uploads.get(client, r).unwrap();
        }
    }

    #[test]
    fn one_client_keeps_its_latest_few() {
        let uploads = Uploads::new(Limits::default());
        let other = uploads.put("other", "o.png".into(), png(2, 2)).unwrap();
        let refs: Vec<_> = (0..PER_CLIENT + 2)
            .map(|i| uploads.put("busy", format!("{i}.png"), png(2, 2)).unwrap())
            .collect();
        assert!(uploads.get("busy", &refs[0]).is_err());
        assert!(uploads.get("busy", &refs[1]).is_err());
        for r in &refs[2..] {
            uploads.get("busy", r).unwrap();
        }
        uploads.get("other", &other).unwrap();
    }
}
