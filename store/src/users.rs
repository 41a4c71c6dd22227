//! The people of a customer's account who manage its credentials through
//! `sessiongate console` (contract section 7). Kept with the token store
//! (etcd: `PREFIX/users/NAME`; a file store: `NAME.users.json` beside it),
//! under the same locking and atomic writes. A user's login secret is shown
//! once; only its SHA-256 is kept, as for every credential.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use sessiongate_core::{Manager, Permission, Role, hash_hex, hash_secret, is_valid_id};

use crate::etcd_store::Document;
use crate::secret::LOGIN_PREFIX;
use crate::store::Store;
use crate::{manage, secret};

/// A user as stored: never the login secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Unique across the store; a credential's `owner`.
    pub name: String,
    pub customer: String,
    pub role: Role,
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Lowercase hex SHA-256 of the login secret.
    pub hash: String,
    /// `sgu_****` and the secret's last three characters.
    pub hint: String,
    /// Creation time, Unix milliseconds.
    pub created: u64,
}

impl Document for User {
    const COLLECTION: &'static str = "users";
    fn name(&self) -> &str {
        &self.name
    }
}

impl User {
    pub fn manager(&self) -> Manager<'_> {
        Manager {
            name: &self.name,
            customer: &self.customer,
            role: self.role,
            permissions: &self.permissions,
        }
    }
}

/// Creates a user; returns the login secret (shown once) and the user kept.
pub fn create(
    store: &Store,
    name: &str,
    customer: &str,
    role: Role,
    mut permissions: Vec<Permission>,
) -> Result<(String, User)> {
    if !is_valid_id(name) {
        bail!("user name {name:?} is not valid: use [A-Za-z0-9._-], 1 to 128 characters");
    }
    if !is_valid_id(customer) {
        bail!("customer id {customer:?} is not valid: use [A-Za-z0-9._-], 1 to 128 characters");
    }
    permissions.sort();
    permissions.dedup();
    let secret = secret::new_login()?;
    let user = User {
        name: name.to_owned(),
        customer: customer.to_owned(),
        role,
        permissions,
        hash: hash_hex(&hash_secret(secret.as_bytes())),
        hint: format!("{LOGIN_PREFIX}****{}", &secret[secret.len() - 3..]),
        created: manage::now_ms(),
    };
    store.update_documents(|users: &mut Vec<User>| {
        if users.iter().any(|u| u.name == user.name) {
            bail!("a user named {:?} already exists", user.name);
        }
        users.push(user.clone());
        Ok(())
    })?;
    Ok((secret, user))
}

/// Deletes a user (their credentials stay, owned by a name no one holds,
/// managed by the account's admins); returns who it was.
pub fn delete(store: &Store, name: &str) -> Result<User> {
    store.update_documents(|users: &mut Vec<User>| {
        let Some(pos) = users.iter().position(|u| u.name == name) else {
            bail!("no user named {name:?}");
        };
        Ok(users.remove(pos))
    })
}

pub fn load(store: &Store) -> Result<Vec<User>> {
    store.load_documents()
}

/// The user whose login secret this is, if any. The digest is compared, as
/// a gate compares a credential's: the secret itself is never kept.
pub fn authenticate(users: &[User], secret: &str) -> Option<User> {
    if !secret.starts_with(LOGIN_PREFIX) {
        return None;
    }
    let hash = hash_hex(&hash_secret(secret.as_bytes()));
    users.iter().find(|u| u.hash == hash).cloned()
}

/// `user list`: every field but the hash.
pub fn list(store: &Store, json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let users = load(store)?;
    if json {
        let rows: Vec<serde_json::Value> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "name": u.name, "customer": u.customer, "role": u.role,
                    "permissions": u.permissions, "hint": u.hint, "created": u.created,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.customer.clone(),
                u.role.to_string(),
                u.permissions
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                u.hint.clone(),
                manage::rfc3339(u.created),
            ]
        })
        .collect();
    manage::table(
        &["NAME", "CUSTOMER", "ROLE", "PERMISSIONS", "HINT", "CREATED"],
        &rows,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_kept_hashed_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let store = Store::File(path.clone());
        let (secret, _) = create(
            &store,
            "ann",
            "acme",
            Role::Architect,
            vec![Permission::TokensView, Permission::TokensView],
        )
        .unwrap();
        assert!(secret.starts_with(LOGIN_PREFIX) && secret.len() == 44);
        let raw = std::fs::read_to_string(dir.path().join("tokens.users.json")).unwrap();
        assert!(!raw.contains(&secret) && !raw.contains(&secret[4..]));
        let users = load(&store).unwrap();
        assert_eq!(users[0].permissions, [Permission::TokensView]);
        assert_eq!(authenticate(&users, &secret).unwrap().name, "ann");
        assert!(authenticate(&users, "sgu_wrong").is_none());
        assert!(create(&store, "ann", "globex", Role::Admin, vec![]).is_err());
        assert!(create(&store, "b/c", "acme", Role::Admin, vec![]).is_err());
        delete(&store, "ann").unwrap();
        assert!(delete(&store, "ann").is_err());
        assert!(load(&store).unwrap().is_empty());
    }
}
