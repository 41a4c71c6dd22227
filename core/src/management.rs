//! Who may manage which credentials (contract section 7): the rules every
//! management surface that acts for a person applies (the console's API and
//! page). The operator's CLI applies none of them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::credential::{CredentialRecord, Kind, Level};
use crate::error::{ErrorCode, GateError};

/// A user's role in their account: it bounds the levels of the keys they
/// create or change, and which keys they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Creates standard keys; views and changes only their own.
    Standard,
    /// Creates standard and architect keys; views and changes only their own.
    Architect,
    /// Creates keys of every level; views and changes every key of the account.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Standard, Role::Architect, Role::Admin];

    /// Parses the lowercase name (`standard`, `architect`, `admin`).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Standard => "standard",
            Role::Architect => "architect",
            Role::Admin => "admin",
        }
    }

    /// The highest key level this role may create or move a key to.
    pub const fn highest_level(self) -> Level {
        match self {
            Role::Standard => Level::Standard,
            Role::Architect => Level::Architect,
            Role::Admin => Level::Admin,
        }
    }

    /// The key levels this role may create or move a key to, lowest first.
    pub fn levels(self) -> Vec<Level> {
        [Level::Standard, Level::Architect, Level::Admin]
            .into_iter()
            .filter(|l| *l <= self.highest_level())
            .collect()
    }

    /// "a standard user", "an architect user", "an admin user".
    const fn a_user(self) -> &'static str {
        match self {
            Role::Standard => "a standard user",
            Role::Architect => "an architect user",
            Role::Admin => "an admin user",
        }
    }

    /// Whether this role sees and changes every key of the account, or only
    /// the keys its user created.
    pub const fn sees_every_key(self) -> bool {
        matches!(self, Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permission over the account's API tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// List the account's tokens.
    #[serde(rename = "api_tokens:view")]
    TokensView,
    /// Create a token.
    #[serde(rename = "api_tokens:create")]
    TokensCreate,
    /// Delete (revoke) a token.
    #[serde(rename = "api_tokens:delete")]
    TokensDelete,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 3] = [
        Permission::TokensView,
        Permission::TokensCreate,
        Permission::TokensDelete,
    ];

    /// Parses the name as the user's record spells it.
    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The name as the user's record spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::TokensView => "api_tokens:view",
            Permission::TokensCreate => "api_tokens:create",
            Permission::TokensDelete => "api_tokens:delete",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a management action was refused (a `403 forbidden`); the message
/// names the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The action on tokens needs a permission the user lacks.
    MissingPermission(Permission),
    /// The key's level (created, or after the change) is above the user's role.
    LevelAboveRole {
        /// The user's role.
        role: Role,
        /// The level asked for.
        level: Level,
    },
    /// A standard or architect user acted on a key someone else created.
    NotTheOwner {
        /// The user's role.
        role: Role,
    },
    /// Only admins read the audit log.
    AdminsOnly,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::MissingPermission(p) => write!(f, "this needs the permission {p}"),
            Refusal::LevelAboveRole { role, level } => {
                let allowed: Vec<String> = role.levels().iter().map(Level::to_string).collect();
                write!(
                    f,
                    "a key's level cannot exceed its manager's role: {} may give keys the level {}, not {level}",
                    role.a_user(),
                    allowed.join(" or ")
                )
            }
            Refusal::NotTheOwner { role } => write!(
                f,
                "{} may view and change only the keys they created",
                role.a_user()
            ),
            Refusal::AdminsOnly => f.write_str("only an admin may read the audit log"),
        }
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The contract's error: `403 forbidden`, naming the rule.
    pub fn error(self) -> GateError {
        GateError::new(ErrorCode::Forbidden, self.to_string())
    }
}

/// A user of an account, acting on its credentials.
#[derive(Debug, Clone, Copy)]
pub struct Manager<'a> {
    /// The user's name (a key's owner).
    pub name: &'a str,
    /// The customer account the user belongs to.
    pub customer: &'a str,
    /// The user's role.
    pub role: Role,
    /// The user's token permissions.
    pub permissions: &'a [Permission],
}

impl Manager<'_> {
    fn needs(&self, permission: Permission) -> Result<(), Refusal> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(Refusal::MissingPermission(permission))
        }
    }

    /// Whether the credential is of this user's account. What is not is, for
    /// this user, not there at all (a 404, never a 403 that would tell it
    /// exists).
    pub fn in_account(&self, record: &CredentialRecord) -> bool {
        record.customer == self.customer
    }

    /// Whether the credential is in this user's listing.
    pub fn lists(&self, record: &CredentialRecord) -> bool {
        self.in_account(record)
            && match record.kind {
                Kind::Token => self.permissions.contains(&Permission::TokensView),
                Kind::Key => self.owns_or_oversees(record),
            }
    }

    fn owns_or_oversees(&self, record: &CredentialRecord) -> bool {
        self.role.sees_every_key() || record.owner.as_deref() == Some(self.name)
    }

    /// May the user list the account's tokens?
    pub fn may_list_tokens(&self) -> Result<(), Refusal> {
        self.needs(Permission::TokensView)
    }

    /// May the user create a token?
    pub fn may_create_token(&self) -> Result<(), Refusal> {
        self.needs(Permission::TokensCreate)
    }

    /// May the user delete a token?
    pub fn may_delete_token(&self) -> Result<(), Refusal> {
        self.needs(Permission::TokensDelete)
    }

    fn within_role(&self, level: Level) -> Result<(), Refusal> {
        if level <= self.role.highest_level() {
            Ok(())
        } else {
            Err(Refusal::LevelAboveRole {
                role: self.role,
                level,
            })
        }
    }

    /// May the user create a key of this level?
    pub fn may_create_key(&self, level: Level) -> Result<(), Refusal> {
        self.within_role(level)
    }

    /// A key of the account renamed and/or moved to `level`: it must be one
    /// this user sees, and its level afterwards within their role.
    pub fn may_change_key(
        &self,
        key: &CredentialRecord,
        level: Option<Level>,
    ) -> Result<(), Refusal> {
        self.may_delete_key(key)?;
        self.within_role(level.unwrap_or(key.level))
    }

    /// May the user delete (or change) this key?
    pub fn may_delete_key(&self, key: &CredentialRecord) -> Result<(), Refusal> {
        if self.owns_or_oversees(key) {
            Ok(())
        } else {
            Err(Refusal::NotTheOwner { role: self.role })
        }
    }

    /// May the user read the audit log?
    pub fn may_read_audit(&self) -> Result<(), Refusal> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Refusal::AdminsOnly)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Sites;

    const LEVELS: [Level; 3] = [Level::Standard, Level::Architect, Level::Admin];

    fn key(customer: &str, owner: Option<&str>, level: Level) -> CredentialRecord {
        let mut r = crate::fixtures::record(
            "k3yB0dyk3yB0dyk3yB0dyk3yB0dyk3yB0dyXY/AB12CD3",
            Kind::Key,
            "k",
            Sites::All,
            level,
        );
        r.customer = customer.into();
        r.owner = owner.map(str::to_owned);
        r
    }

    fn token(customer: &str) -> CredentialRecord {
        let mut r = crate::fixtures::record(
            "fus_abcdefghijABCDEFGHIJ0123456789klmnopqrst",
            Kind::Token,
            "t",
            Sites::All,
            Level::Standard,
        );
        r.customer = customer.into();
        r
    }

    fn manager(role: Role, permissions: &[Permission]) -> Manager<'_> {
        Manager {
            name: "ann",
            customer: "acme",
            role,
            permissions,
        }
    }

    /// The role table of section 7, row by row: the levels each role may
    /// create or move a key to.
    #[test]
    fn levels_by_role() {
        let table = [
            (Role::Standard, vec![Level::Standard]),
            (Role::Architect, vec![Level::Standard, Level::Architect]),
            (Role::Admin, LEVELS.to_vec()),
        ];
        for (role, allowed) in table {
            assert_eq!(role.levels(), allowed);
            let m = manager(role, &[]);
            let own = key("acme", Some("ann"), Level::Standard);
            for level in LEVELS {
                let expected = allowed.contains(&level);
                assert_eq!(m.may_create_key(level).is_ok(), expected, "{role} {level}");
                assert_eq!(
                    m.may_change_key(&own, Some(level)).is_ok(),
                    expected,
                    "{role} moves to {level}"
                );
                // A rename keeps the level, which must still be within the role.
                let at = key("acme", Some("ann"), level);
                assert_eq!(m.may_change_key(&at, None).is_ok(), expected);
            }
        }
    }

    /// The table's other column: whose keys each role sees and changes.
    #[test]
    fn keys_seen_by_role() {
        let others = key("acme", Some("bob"), Level::Standard);
        let operators = key("acme", None, Level::Standard);
        let own = key("acme", Some("ann"), Level::Standard);
        for role in Role::ALL {
            let m = manager(role, &[]);
            assert!(m.lists(&own) && m.may_delete_key(&own).is_ok());
            for k in [&others, &operators] {
                let admin = role == Role::Admin;
                assert_eq!(m.lists(k), admin, "{role}");
                assert_eq!(m.may_delete_key(k).is_ok(), admin);
                assert_eq!(m.may_change_key(k, None).is_ok(), admin);
            }
        }
    }

    #[test]
    fn tokens_need_their_permissions() {
        let t = token("acme");
        for p in Permission::ALL {
            for role in Role::ALL {
                let m = manager(role, std::slice::from_ref(&p));
                assert_eq!(m.may_list_tokens().is_ok(), p == Permission::TokensView);
                assert_eq!(m.lists(&t), p == Permission::TokensView);
                assert_eq!(m.may_create_token().is_ok(), p == Permission::TokensCreate);
                assert_eq!(m.may_delete_token().is_ok(), p == Permission::TokensDelete);
            }
        }
        let none = manager(Role::Admin, &[]);
        assert_eq!(
            none.may_create_token().unwrap_err().to_string(),
            "this needs the permission api_tokens:create"
        );
    }

    #[test]
    fn another_account_is_not_there() {
        let all = Permission::ALL;
        let m = manager(Role::Admin, &all);
        for r in [key("globex", Some("ann"), Level::Standard), token("globex")] {
            assert!(!m.in_account(&r) && !m.lists(&r));
        }
    }

    #[test]
    fn refusals_name_the_rule() {
        let m = manager(Role::Architect, &[]);
        let e = m.may_create_key(Level::Admin).unwrap_err().error();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            e.message,
            "a key's level cannot exceed its manager's role: an architect user may give keys the level standard or architect, not admin"
        );
        let other = key("acme", Some("bob"), Level::Standard);
        assert_eq!(
            m.may_delete_key(&other).unwrap_err().to_string(),
            "an architect user may view and change only the keys they created"
        );
        assert_eq!(m.may_read_audit(), Err(Refusal::AdminsOnly));
        assert!(manager(Role::Admin, &[]).may_read_audit().is_ok());
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
