//! sqlrs-lsp: the sqlrs language server as a library (the binary serves it
//! over stdio; tests drive it in-process). A thin adaptor over the sqlrsd
//! API: only this crate knows LSP types.

mod commands;
pub mod daemon;
pub mod ext;
pub mod plan;
pub mod run;
pub mod server;
pub mod settings;
pub mod split;
pub mod status;
pub mod text;
mod workspaces;

pub use server::{Config, Server, service};
