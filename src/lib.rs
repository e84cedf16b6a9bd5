//! Perennial: a Kubernetes operator for services that must run forever.
//!
//! Data flows one way: `observe` → `health` → `plan` → `act`. Only `observe` and `act`
//! talk to the API server; everything between is pure.

pub mod act;
pub mod api;
pub mod api_client;
pub mod backoff;
pub mod build;
pub mod cli;
pub mod controller;
pub mod crd_check;
pub mod health;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod own_writes;
pub mod plan;
pub mod start;
pub mod status_writes;
pub mod telemetry;
pub mod work_queue;
