//! The gate of every RPC, with the HTTP front's rules and tokens: health RPCs are open;
//! the repository RPCs are the control plane (`--admin-token`; without one, only on a
//! listener bound to a loopback address, where `--api-token` applies if set); everything
//! else needs `--api-token` when set (the admin token is accepted too). The token is the
//! `authorization: Bearer <token>` metadata, compared in constant time.

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::status::unauthenticated;
use super::GrpcOptions;
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Health,
    Api,
    Admin,
}

fn bearer(md: &MetadataMap) -> &[u8] {
    md.get("authorization")
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or(b"")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn authorize(
    opts: &GrpcOptions,
    metrics: &Metrics,
    md: &MetadataMap,
    class: Class,
) -> Result<(), Status> {
    let given = bearer(md);
    let matches = |t: Option<&str>| t.is_some_and(|t| constant_time_eq(given, t.as_bytes()));
    let (label, needed) = match class {
        Class::Health => return Ok(()),
        Class::Admin => match opts.admin_token.as_deref() {
            Some(t) => ("admin", Some(t)),
            None if opts.control_open => ("admin", opts.api_token.as_deref()),
            None => {
                metrics.auth_failure("admin", 403);
                return Err(Status::permission_denied(
                    "the control plane needs --admin-token, or a gRPC listener bound to a loopback address (--grpc-addr 127.0.0.1:PORT)",
                ));
            }
        },
        Class::Api => ("api", opts.api_token.as_deref()),
    };
    let admin_ok = class != Class::Admin && matches(opts.admin_token.as_deref());
    if needed.is_some() && !matches(needed) && !admin_ok {
        metrics.auth_failure(label, 401);
        return Err(unauthenticated());
    }
    Ok(())
}
