//! The page's parts.
pub mod chat;
pub mod conversations;
pub mod image_panel;
pub mod overlay;
pub mod settings;
pub mod share;
pub mod tasks;
