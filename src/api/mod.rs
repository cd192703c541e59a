//! What the gateway and the upstreams both speak: the OpenAI wire shapes, the
//! pure translations (Chat ⇄ Responses, Chat ⇄ Anthropic Messages, and what
//! they share in [`translate`]), SSE parsing, the `/health` report and the metrics.
//!
//! It sits below both [`crate::gateway`] and [`crate::upstream`] so that neither has
//! to import the other to agree on a shape: the upstreams never import the gateway.

pub mod anthropic;
pub mod completions;
pub(crate) mod health;
pub(crate) mod metrics;
pub mod openai;
pub mod responses;
pub mod sse;
pub(crate) mod translate;
