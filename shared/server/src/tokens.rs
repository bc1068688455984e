//! Named tokens kept in a table of their own (the coordinator's enrollment tokens, the edge's federation keys),
//! the admin token kept as a setting, and the admin API that creates, lists and revokes named tokens.
//!
//! The table of a [`TokenKind`] has the columns `(id TEXT PRIMARY KEY, label TEXT, hash BLOB UNIQUE)`; only the
//! SHA-256 of a token is stored, and the token itself is shown once, when it is created.

use axum::extract::{FromRequestParts, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use commons_shared::validate::{MAX_STRING_LEN, parse_json};
use serde_json::json;

use crate::auth::{AdminGate, NamedToken, TokenHash, TokenSet};
use crate::db::{Db, DbError};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Id};

/// What a set of named tokens is called, where it is stored and how the admin API shows it.
#[derive(Debug, Clone, Copy)]
pub struct TokenKind {
    /// The table (see the module's documentation).
    pub table: &'static str,
    /// How a message names one: "enrollment token".
    pub noun: &'static str,
    /// The field that carries the new token in the answer to a create: "token".
    pub secret_field: &'static str,
    /// The field that lists them in the answer to a list: "tokens".
    pub list_field: &'static str,
}

/// A set of named tokens, in memory for checks and in its table for restarts.
#[derive(Debug)]
pub struct StoredTokens {
    kind: TokenKind,
    db: Db,
    set: TokenSet,
}

impl StoredTokens {
    /// Loads the tokens of `kind` (at start).
    pub fn load(db: Db, kind: TokenKind) -> Result<Self, DbError> {
        let sql = format!("SELECT id, label, hash FROM {}", kind.table);
        let rows = db.read_now(|c| {
            c.prepare(&sql)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?)))?
                .collect::<Result<Vec<(String, String, Vec<u8>)>, _>>()
        })?;
        let entries = rows
            .into_iter()
            .map(|(id, label, hash)| {
                let hash: TokenHash = hash
                    .try_into()
                    .map_err(|_| DbError::Corrupt(format!("the hash of {} {id}", kind.noun)))?;
                Ok(NamedToken { id, label, hash })
            })
            .collect::<Result<_, DbError>>()?;
        Ok(Self {
            kind,
            db,
            set: TokenSet::new(entries),
        })
    }

    /// Creates a token durably: (id, the token to show once).
    pub async fn create(&self, label: String) -> Result<(String, String), DbError> {
        let (entry, token) = NamedToken::mint(label);
        let sql = format!(
            "INSERT INTO {} (id, label, hash) VALUES (?1, ?2, ?3)",
            self.kind.table
        );
        let (id, label, hash) = (entry.id.clone(), entry.label.clone(), entry.hash.to_vec());
        self.db
            .write(move |tx| {
                tx.execute(&sql, rusqlite::params![id, label, hash])
                    .map(|_| ())
            })
            .await?;
        let id = entry.id.clone();
        self.set.insert(entry);
        Ok((id, token))
    }

    /// Revokes a token durably; 404 when there is none with that id.
    pub async fn revoke(&self, id: &str) -> ApiResult<()> {
        let sql = format!("DELETE FROM {} WHERE id = ?1", self.kind.table);
        let key = id.to_owned();
        let existed = self
            .db
            .write(move |tx| tx.execute(&sql, [key]).map(|n| n > 0))
            .await?;
        if !existed {
            return Err(ApiError::NotFound(format!("no {} {id:?}", self.kind.noun)));
        }
        self.set.remove(id);
        Ok(())
    }

    /// The id of the token `token` is, if it is one.
    pub fn find(&self, token: &str) -> Option<String> {
        self.set.find(token)
    }

    /// (id, label) of every token.
    pub fn list(&self) -> Vec<(String, String)> {
        self.set.list()
    }
}

/// The admin token: the configured one, else the hash stored as the `admin_token_hash` setting, else a new one
/// whose hash is stored. Returns the gate and, when one was created, the new token to show once.
pub async fn admin_gate(
    db: &Db,
    configured: Option<&str>,
    failures_per_minute: u32,
) -> Result<(AdminGate, Option<String>), DbError> {
    const SETTING: &str = "admin_token_hash";
    let stored = match configured {
        Some(_) => None,
        None => db.setting(SETTING)?,
    };
    let (hash, new_token) =
        AdminGate::resolve(configured, stored.as_deref()).map_err(DbError::Corrupt)?;
    if new_token.is_some() {
        db.set_setting(SETTING, &hex::encode(hash)).await?;
    }
    Ok((AdminGate::new(hash, failures_per_minute), new_token))
}

/// Gives a handler the named tokens it administers.
pub type Pick<S> = fn(&S) -> &StoredTokens;

/// `GET` and `POST path` (list, create `{"label"}`) and `DELETE path/{id}` (revoke), each behind the extractor
/// `A` (the server's admin check).
pub fn admin_routes<S, A>(path: &str, pick: Pick<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    A: FromRequestParts<S, Rejection = ApiError> + Send + 'static,
{
    let list = move |State(s): State<S>, _: A| async move {
        let tokens = pick(&s);
        let entries: Vec<_> = tokens
            .list()
            .into_iter()
            .map(|(id, label)| json!({ "id": id, "label": label }))
            .collect();
        Json(json!({ tokens.kind.list_field: entries }))
    };
    let create = move |State(s): State<S>, _: A, Body(body): Body| async move {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Request {
            label: String,
        }
        let req: Request = parse_json(&body)?;
        if req.label.is_empty() || req.label.len() > MAX_STRING_LEN {
            return Err(ApiError::Invalid {
                field: "label".into(),
                message: format!("1 to {MAX_STRING_LEN} characters"),
            });
        }
        let tokens = pick(&s);
        let (id, token) = tokens.create(req.label.clone()).await?;
        ApiResult::Ok(Json(
            json!({ "id": id, "label": req.label, tokens.kind.secret_field: token }),
        ))
    };
    let revoke = move |State(s): State<S>, _: A, Id(id): Id| async move {
        pick(&s).revoke(&id).await?;
        ApiResult::Ok(Json(json!({ "status": "revoked", "id": id })))
    };
    Router::new()
        .route(path, get(list).post(create))
        .route(&format!("{path}/{{id}}"), delete(revoke))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) STRICT;
         CREATE TABLE keys (id TEXT PRIMARY KEY NOT NULL, label TEXT NOT NULL, hash BLOB NOT NULL UNIQUE) STRICT;",
    ];
    const KIND: TokenKind = TokenKind {
        table: "keys",
        noun: "key",
        secret_field: "key",
        list_field: "keys",
    };

    #[tokio::test]
    async fn tokens_survive_a_restart_and_revoked_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        let tokens = StoredTokens::load(db.clone(), KIND).unwrap();
        let (a, token_a) = tokens.create("a".into()).await.unwrap();
        let (b, token_b) = tokens.create("b".into()).await.unwrap();
        assert_eq!(tokens.find(&token_a), Some(a.clone()));
        tokens.revoke(&b).await.unwrap();
        assert!(matches!(
            tokens.revoke(&b).await,
            Err(ApiError::NotFound(_))
        ));
        let (gate, new) = admin_gate(&db, None, 5).await.unwrap();
        let admin = new.expect("a new admin token");
        assert!(gate.is_admin(&admin));
        drop((tokens, db));

        let db = Db::open(dir.path(), "t.db", STEPS, "test-db").unwrap();
        let tokens = StoredTokens::load(db.clone(), KIND).unwrap();
        assert_eq!(tokens.list(), vec![(a.clone(), "a".to_owned())]);
        assert_eq!(tokens.find(&token_a), Some(a));
        assert_eq!(tokens.find(&token_b), None);
        let (gate, new) = admin_gate(&db, None, 5).await.unwrap();
        assert!(new.is_none() && gate.is_admin(&admin));
        let (gate, _) = admin_gate(&db, Some("configured-token-0123"), 5)
            .await
            .unwrap();
        assert!(!gate.is_admin(&admin) && gate.is_admin("configured-token-0123"));
    }
}
