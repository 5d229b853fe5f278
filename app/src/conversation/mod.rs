//! Conversations kept in the browser: the stored record and its exports (`record`), IndexedDB (`idb`) and the
//! page's list with its actions (`store`). Nothing of them is sent anywhere but to the model with a question.
pub mod idb;
pub mod record;
pub mod store;
