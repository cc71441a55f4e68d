//! The command-line client of the REST API: `lb backends|frontends|servers|status` against
//! a running daemon's `/v1` with a Bearer token. Tables for people (`tables`), `-o json`
//! for scripts; API errors are printed as the API gave them (`client`).

mod client;
pub mod doctor;
mod tables;

pub use client::{ApiFailure, Client, read_document};
pub use tables::{backends_table, frontends_table, servers_table, status_table, table};
