//! The validation example's backend: `example.signup.v1.Signup` with
//! in-memory accounts, served by `gateway demo` when the descriptors hold
//! the service (examples/validation). It checks nothing itself: the rules
//! on the request messages are the gateway's to check at the edge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, ReflectMessage, Value};
use tonic::{Request, Response, Status};

use super::dynamic::{BoxFuture, DynamicServer};

pub const SERVICE: &str = "example.signup.v1.Signup";

/// Accounts the demo keeps before refusing more: a demo left running
/// while something posts in a loop must not grow without bound.
const MAX_ACCOUNTS: usize = 10_000;

/// Fields a created account copies from its request.
const COPIED: &[&str] = &["username", "email", "age", "interests", "country"];

#[derive(Default)]
struct Store {
    accounts: HashMap<String, DynamicMessage>,
    /// Accounts ever created: the source of the next id.
    created: u64,
}

/// Builds the server over `pool`, which must contain the sign-up descriptors.
pub fn server(pool: &DescriptorPool) -> DynamicServer {
    let store = Arc::new(Mutex::new(Store::default()));
    DynamicServer::new(
        pool,
        &[SERVICE],
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let result = handle(&store, method, req.into_inner());
            Box::pin(async move { result.map(Response::new) }) as BoxFuture<_>
        },
    )
}

fn handle(
    store: &Mutex<Store>,
    method: &MethodDescriptor,
    req: DynamicMessage,
) -> Result<DynamicMessage, Status> {
    let mut s = store
        .lock()
        .map_err(|_| Status::internal("store lock poisoned"))?;
    match method.name() {
        "CreateAccount" => {
            if s.accounts.len() >= MAX_ACCOUNTS {
                return Err(Status::resource_exhausted(format!(
                    "the demo keeps at most {MAX_ACCOUNTS} accounts; restart it to start over"
                )));
            }
            s.created += 1;
            let id = uuid_of(s.created);
            let mut account = DynamicMessage::new(method.output());
            account.set_field_by_name("id", Value::String(id.clone()));
            for name in COPIED {
                if let Some(v) = req.get_field_by_name(name) {
                    account.set_field_by_name(name, v.into_owned());
                }
            }
            if let Some(ts) = account
                .descriptor()
                .get_field_by_name("create_time")
                .and_then(|f| f.kind().as_message().cloned())
            {
                let d = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let mut t = DynamicMessage::new(ts);
                t.set_field_by_name("seconds", Value::I64(d.as_secs() as i64));
                account.set_field_by_name("create_time", Value::Message(t));
            }
            s.accounts.insert(id, account.clone());
            Ok(account)
        }
        "GetAccount" => {
            let id = req
                .get_field_by_name("id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            s.accounts
                .get(&id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("account {id} does not exist")))
        }
        "GetSignupPolicy" => {
            let mut policy = DynamicMessage::new(method.output());
            policy.set_field_by_name("open", Value::Bool(true));
            policy.set_field_by_name("min_age", Value::I32(13));
            policy.set_field_by_name("max_interests", Value::I32(5));
            Ok(policy)
        }
        other => Err(Status::unimplemented(format!("{other} is not implemented"))),
    }
}

/// The `n`th account's id: a version-4-shaped UUID (what GetAccount's
/// `string.uuid` rule asks for), numbered rather than random so a demo
/// session reads the same every time.
fn uuid_of(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuids_and_distinct() {
        for n in [1, u64::from(u32::MAX) * 7] {
            let id = uuid_of(n);
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
        }
        assert_ne!(uuid_of(1), uuid_of(2));
    }
}
