//! What a task may use beyond computing, each granted by its manifest's `[capabilities]`.
//!
//! - [`http`]: outbound HTTP to the origins a grant lists.

pub mod http;
