//! One lease term at a time: every write of the operators in the soak's namespace, as the
//! API server's audit log shows it, comes from the process that held the leader Lease at
//! that moment. The operator names itself in its User-Agent (`perennial/VERSION
//! (IDENTITY)`), and IDENTITY is what it writes into the Lease as its holder.

use super::*;
pub(crate) use crate::support::terms::{all_terms, holder_at, term_written, watch_terms, Term};

/// The identity an operator's User-Agent names: `perennial/0.1.0 (host-1234)` → host-1234.
pub(crate) fn identity_of(user_agent: &str) -> Option<&str> {
    let rest = user_agent.strip_prefix("perennial/")?;
    let (_, rest) = rest.split_once(" (")?;
    rest.strip_suffix(')')
}

/// What the terms and the audit log say: (writes checked, the violations).
pub(crate) fn writes_outside_their_term(
    namespace: &str,
    terms: &[Term],
    now: f64,
) -> (usize, Vec<Violation>) {
    let writes: Vec<Value> = operator_write_entries(namespace)
        .into_iter()
        // Contending for the lease is what a standby does; everything else is acting.
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .collect();
    let mut violations = Vec::new();
    if writes.is_empty() || terms.is_empty() {
        violations.push(Violation {
            at: now,
            until: None,
            kind: "unchecked-terms",
            subject: namespace.to_string(),
            details: format!(
                "{} writes in the audit log and {} states of the lease: nothing to check",
                writes.len(),
                terms.len()
            ),
        });
    }
    for e in &writes {
        let agent = e["userAgent"].as_str().unwrap_or_default();
        let at = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let (Some(writer), Some(at)) = (identity_of(agent), at) else {
            violations.push(Violation {
                at: now,
                until: None,
                kind: "unattributed-write",
                subject: describe_write(e),
                details: format!("no operator identity in the User-Agent {agent:?} or no time"),
            });
            continue;
        };
        let holder = holder_at(terms, at);
        if holder != Some(writer) {
            violations.push(Violation {
                at: now,
                until: None,
                kind: "two-leaders",
                subject: describe_write(e),
                details: format!(
                    "made by {writer} at {at} (code {}), when the lease was {}",
                    e["responseStatus"]["code"],
                    holder.map_or("held by nobody".to_string(), |h| format!("held by {h}"))
                ),
            });
        }
    }
    (writes.len(), violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_holder_of_a_moment_is_that_of_the_last_state_before_it() {
        let terms = vec![
            Term {
                since: at("2026-01-01T00:00:10Z"),
                holder: Some("b-2".into()),
            },
            Term {
                since: at("2026-01-01T00:00:00Z"),
                holder: Some("a-1".into()),
            },
            Term {
                since: at("2026-01-01T00:00:05Z"),
                holder: None,
            },
        ];
        assert_eq!(holder_at(&terms, at("2025-12-31T23:59:59Z")), None);
        assert_eq!(holder_at(&terms, at("2026-01-01T00:00:01Z")), Some("a-1"));
        assert_eq!(holder_at(&terms, at("2026-01-01T00:00:06Z")), None);
        assert_eq!(holder_at(&terms, at("2026-01-01T00:00:10Z")), Some("b-2"));
    }

    #[test]
    fn the_identity_is_read_from_the_operators_user_agent_only() {
        assert_eq!(
            identity_of("perennial/0.1.0 (host-1234)"),
            Some("host-1234")
        );
        assert_eq!(identity_of("kubectl/v1.36.3 (linux/amd64)"), None);
        assert_eq!(identity_of("perennial/0.1.0"), None);
    }

    #[test]
    fn a_term_the_watch_missed_is_read_from_the_body_of_the_accepted_lease_write() {
        let write = |code: u64, holder: &str| {
            json!({
                "stage": "ResponseComplete", "verb": "update",
                "objectRef": {"resource": "leases", "namespace": "soak", "name": "leader"},
                "responseStatus": {"code": code},
                "requestObject": {"spec": {
                    "holderIdentity": holder,
                    "acquireTime": "2026-01-01T00:00:35.084000Z",
                    "renewTime": "2026-01-01T00:00:43.127000Z"
                }}
            })
        };
        assert_eq!(
            term_written(&write(200, "vm-13031")),
            Some(Term {
                since: at("2026-01-01T00:00:35.084Z"),
                holder: Some("vm-13031".into())
            })
        );
        assert_eq!(term_written(&write(409, "vm-13031")), None, "refused");
        assert_eq!(
            term_written(&write(200, "")),
            Some(Term {
                since: at("2026-01-01T00:00:43.127Z"),
                holder: None
            }),
            "a release holds from its renewal"
        );
        let mut metadata_only = write(200, "vm-13031");
        metadata_only["requestObject"] = Value::Null;
        assert_eq!(term_written(&metadata_only), None);
    }
}
