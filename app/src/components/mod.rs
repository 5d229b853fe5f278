//! The page's parts.
pub mod chat;
pub mod image_panel;
pub mod overlay;
pub mod settings;
pub mod tasks;
