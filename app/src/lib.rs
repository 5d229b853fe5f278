//! Leptos app (placeholder until the web app lands).
