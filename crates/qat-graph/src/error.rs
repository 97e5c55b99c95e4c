//! The graph crate's error type: every failure names the node or tensor it is about.

use std::fmt::Write as _;

/// Errors from building, validating, running or (de)serialising a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A node is malformed: bad shape, channel mismatch, unsupported configuration, ...
    #[error("node `{node}`: {msg}")]
    Node { node: String, msg: String },
    /// The graph as a whole is malformed (duplicate names, cycles, dangling inputs, ...).
    #[error("graph: {0}")]
    Graph(String),
    /// A state dict does not match the graph's parameters.
    #[error("state dict does not match the graph:{}", state_dict_report(.missing, .unexpected, .mismatched))]
    StateDict {
        /// Parameters the graph needs that the state dict lacks.
        missing: Vec<String>,
        /// Keys in the state dict the graph has no parameter for.
        unexpected: Vec<String>,
        /// `name: expected [..], found [..]`.
        mismatched: Vec<String>,
    },
    /// An invalid argument to a utility (optimizer, schedule, ...).
    #[error("{0}")]
    Invalid(String),
    /// A failure inside candle (tensor op, safetensors parsing, I/O).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn state_dict_report(missing: &[String], unexpected: &[String], mismatched: &[String]) -> String {
    let mut s = String::new();
    for (what, list) in [
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mismatched),
    ] {
        if !list.is_empty() {
            let _ = write!(s, " {what} ({}): {}.", list.len(), list.join(", "));
        }
    }
    s
}

impl GraphError {
    /// A [`GraphError::Node`] for `node`.
    pub fn node(node: impl Into<String>, msg: impl Into<String>) -> Self {
        GraphError::Node {
            node: node.into(),
            msg: msg.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, GraphError>;
