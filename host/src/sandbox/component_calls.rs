//! The preview 2 door to the capabilities: the WIT interfaces of `wit/taskhost.wit`
//! (`taskhost:task/host`, `kv`, `sql`, `mail`, `publish`), each function a JSON request to
//! the same [`TaskAccess::call`] that preview 1's `taskhost.call` makes. Strings a
//! component passes are bounded by the store's hostcall fuel
//! (`COMPONENT_MAX_CALL_BYTES`).
//!
//! [`TaskAccess::call`]: crate::capabilities::TaskAccess::call

use serde_json::{Value, json};
use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Lower};

use super::state::ComponentState;
use crate::capabilities::{CallError, ErrorCode, TaskAccess};

/// The WIT `call-error` record.
#[derive(Debug, Clone, ComponentType, Lift, Lower)]
#[component(record)]
pub struct WitCallError {
    code: String,
    message: String,
}

impl From<CallError> for WitCallError {
    fn from(error: CallError) -> Self {
        WitCallError {
            code: error.code.as_str().to_owned(),
            message: error.message,
        }
    }
}

type Answer<T> = wasmtime::Result<(Result<T, WitCallError>,)>;

/// Makes a call for a component, with the task's access cloned out of its store (see
/// [`access`]).
async fn call(
    access: &Option<TaskAccess>,
    name: &str,
    request: Value,
) -> Result<Value, WitCallError> {
    let Some(access) = access else {
        return Err(CallError::new(
            ErrorCode::NotAllowed,
            format!("capability {name:?} is not allowed: this run has no capabilities at all"),
        )
        .into());
    };
    let request = serde_json::to_vec(&request).unwrap_or_default();
    access.call(name, &request).await.map_err(Into::into)
}

/// The task's access, cloned out of the store before the call's future starts: the
/// future holds no part of the store (which is not `Sync`), and the store is free while
/// the call waits.
fn access(store: &StoreContextMut<'_, ComponentState>) -> Option<TaskAccess> {
    store.data().controls.capabilities.clone()
}

/// JSON text from a component, as a value.
fn parse(text: &str, what: &str) -> Result<Value, WitCallError> {
    serde_json::from_str(text)
        .map_err(|error| CallError::bad_request(format!("{what} is not JSON text: {error}")).into())
}

fn unexpected(response: &Value) -> WitCallError {
    CallError::failed(format!(
        "the capability answered {response}, which was not expected"
    ))
    .into()
}

/// Adds the interfaces to the component linker.
pub fn link(linker: &mut Linker<ComponentState>) -> anyhow::Result<()> {
    let mut host = linker.instance("taskhost:task/host@0.1.0")?;
    host.func_wrap_async("call", |store, (name, request): (String, String)| {
        let access = access(&store);
        Box::new(async move {
            let request = match parse(&request, "the request") {
                Ok(request) => request,
                Err(error) => return Ok((Err(error),)),
            };
            let answer = call(&access, &name, request)
                .await
                .map(|response| response.to_string());
            Ok((answer,))
        })
    })?;

    let mut kv = linker.instance("taskhost:task/kv@0.1.0")?;
    kv.func_wrap_async("get", |store, (key,): (String,)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<Option<String>> =
                Ok((call(&access, "kv", json!({"op": "get", "key": key}))
                    .await
                    .map(|response| match &response["value"] {
                        Value::Null => None,
                        value => Some(value.to_string()),
                    }),));
            answer
        })
    })?;
    kv.func_wrap_async("set", |store, (key, value): (String, String)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<()> = Ok((async {
                let value = parse(&value, "the value")?;
                call(
                    &access,
                    "kv",
                    json!({"op": "set", "key": key, "value": value}),
                )
                .await?;
                Ok(())
            }
            .await,));
            answer
        })
    })?;
    kv.func_wrap_async("delete", |store, (key,): (String,)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<bool> =
                Ok((call(&access, "kv", json!({"op": "delete", "key": key}))
                    .await
                    .map(|response| response["deleted"].as_bool().unwrap_or(false)),));
            answer
        })
    })?;
    kv.func_wrap_async("list", |store, (prefix,): (String,)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<Vec<(String, String)>> = Ok((call(
                &access,
                "kv",
                json!({"op": "list", "prefix": prefix}),
            )
            .await
            .map(|response| {
                response["entries"]
                    .as_array()
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|entry| {
                                (
                                    entry["key"].as_str().unwrap_or_default().to_owned(),
                                    entry["value"].to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            }),));
            answer
        })
    })?;
    kv.func_wrap_async("incr", |store, (key, by): (String, i64)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<i64> = Ok((async {
                let response =
                    call(&access, "kv", json!({"op": "incr", "key": key, "by": by})).await?;
                response["value"]
                    .as_i64()
                    .ok_or_else(|| unexpected(&response))
            }
            .await,));
            answer
        })
    })?;
    kv.func_wrap_async(
        "cas",
        |store, (key, expected, value): (String, Option<String>, Option<String>)| {
            let access = access(&store);
            Box::new(async move {
                let answer: Answer<bool> = Ok((async {
                    let expected = expected
                        .map(|text| parse(&text, "`expected`"))
                        .transpose()?;
                    let value = value.map(|text| parse(&text, "the value")).transpose()?;
                    let request =
                        json!({"op": "cas", "key": key, "expected": expected, "value": value});
                    let response = call(&access, "kv", request).await?;
                    Ok(response["swapped"].as_bool().unwrap_or(false))
                }
                .await,));
                answer
            })
        },
    )?;

    let mut sql = linker.instance("taskhost:task/sql@0.1.0")?;
    sql.func_wrap_async("query", |store, (statement, params): (String, String)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<String> = Ok((async {
                let params = parse(&params, "`params`")?;
                let request = json!({"op": "query", "sql": statement, "params": params});
                let response = call(&access, "sql", request).await?;
                Ok(response["rows"].to_string())
            }
            .await,));
            answer
        })
    })?;
    sql.func_wrap_async("execute", |store, (statement, params): (String, String)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<u64> = Ok((async {
                let params = parse(&params, "`params`")?;
                let request = json!({"op": "execute", "sql": statement, "params": params});
                let response = call(&access, "sql", request).await?;
                Ok(response["rows_affected"].as_u64().unwrap_or(0))
            }
            .await,));
            answer
        })
    })?;

    let mut mail = linker.instance("taskhost:task/mail@0.1.0")?;
    mail.func_wrap_async(
        "send",
        |store, (to, subject, body): (Vec<String>, String, String)| {
            let access = access(&store);
            Box::new(async move {
                let answer: Answer<String> = Ok((async {
                    let request = json!({"to": to, "subject": subject, "body": body});
                    let response = call(&access, "mail", request).await?;
                    Ok(response["message_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned())
                }
                .await,));
                answer
            })
        },
    )?;

    let mut publish = linker.instance("taskhost:task/publish@0.1.0")?;
    publish.func_wrap_async("publish", |store, (topic, data): (String, String)| {
        let access = access(&store);
        Box::new(async move {
            let answer: Answer<u32> = Ok((async {
                let data = parse(&data, "`data`")?;
                let response =
                    call(&access, "publish", json!({"topic": topic, "data": data})).await?;
                Ok(response["delivered"].as_u64().unwrap_or(0) as u32)
            }
            .await,));
            answer
        })
    })?;
    Ok(())
}
