//! The roles a dump needs on the server it is restored to: each object's
//! owner (a field of its table-of-contents entry) and the roles named in its
//! privileges (`ACL` and `DEFAULT ACL` entries, whose definition is the SQL
//! pg_dump wrote: `GRANT … TO r;`, `REVOKE … FROM r;`, `SET SESSION
//! AUTHORIZATION r;`, `ALTER DEFAULT PRIVILEGES FOR ROLE r …`). A restore
//! checks them before it starts, so that a missing role is reported with
//! the list to create instead of failing half way.
// Parses what a source wrote: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

/// A token of pg_dump's SQL: a bare word (upper-cased), a quoted identifier
/// (as written), a string literal, or punctuation.
#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Literal,
    Punct(char),
}

fn tokens(sql: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut it = sql.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' => {
                let mut s = String::new();
                while let Some(c) = it.next() {
                    if c == '"' {
                        if it.peek() == Some(&'"') {
                            it.next();
                        } else {
                            break;
                        }
                    }
                    s.push(c);
                }
                out.push(Tok::Quoted(s));
            }
            '\'' => {
                while let Some(c) = it.next() {
                    if c == '\'' {
                        if it.peek() == Some(&'\'') {
                            it.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push(Tok::Literal);
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&n) = it.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '$') {
                        break;
                    }
                    s.push(n);
                    it.next();
                }
                out.push(Tok::Word(s));
            }
            c => out.push(Tok::Punct(c)),
        }
    }
    out
}

fn is_word(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word(s) if s.eq_ignore_ascii_case(w))
}

/// The role a token names: a quoted identifier as written, a bare one
/// folded to lower case as PostgreSQL does; `PUBLIC` is no role.
fn role(t: &Tok) -> Option<String> {
    match t {
        Tok::Quoted(s) => Some(s.clone()),
        Tok::Word(s) if !s.eq_ignore_ascii_case("public") => Some(s.to_lowercase()),
        _ => None,
    }
}

/// The roles named in an `ACL` or `DEFAULT ACL` entry's SQL.
pub fn acl_roles(sql: &str) -> Vec<String> {
    let mut roles = Vec::new();
    for stmt in tokens(sql).split(|t| *t == Tok::Punct(';')) {
        let Some(first) = stmt.first() else { continue };
        if is_word(first, "SET") {
            // SET SESSION AUTHORIZATION r (a grantor other than the owner)
            if let [_, session, authorization, r] = stmt {
                if is_word(session, "SESSION") && is_word(authorization, "AUTHORIZATION") {
                    roles.extend(role(r));
                }
            }
            continue;
        }
        let mut rest = stmt;
        if is_word(first, "ALTER") {
            // ALTER DEFAULT PRIVILEGES FOR ROLE r [IN SCHEMA s] GRANT … TO r
            if let Some(i) = stmt.iter().position(|t| is_word(t, "ROLE") || is_word(t, "USER")) {
                roles.extend(stmt.get(i + 1).and_then(role));
            }
            match stmt.iter().position(|t| is_word(t, "GRANT") || is_word(t, "REVOKE")) {
                Some(i) => rest = stmt.get(i..).unwrap_or_default(),
                None => continue,
            }
        }
        let keyword = match rest.first() {
            Some(t) if is_word(t, "GRANT") => "TO",
            Some(t) if is_word(t, "REVOKE") => "FROM",
            _ => continue,
        };
        let Some(at) = rest.iter().rposition(|t| is_word(t, keyword)) else { continue };
        for t in rest.get(at + 1..).unwrap_or_default() {
            if is_word(t, "WITH") || is_word(t, "CASCADE") || is_word(t, "RESTRICT") || is_word(t, "GRANTED") {
                break;
            }
            if is_word(t, "GROUP") {
                continue;
            }
            roles.extend(role(t));
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roles_of_pg_dumps_privilege_statements() {
        assert_eq!(acl_roles("GRANT SELECT ON TABLE public.citoyens TO lecteur;\n"), ["lecteur"]);
        assert_eq!(
            acl_roles("REVOKE ALL ON SCHEMA public FROM PUBLIC;\nGRANT ALL ON SCHEMA public TO \"Élus \"\"2026\"\"\";\n"),
            ["Élus \"2026\""]
        );
        assert_eq!(
            acl_roles("SET SESSION AUTHORIZATION greffe;\nGRANT SELECT(nom),UPDATE(nom) ON TABLE public.\"TO\" TO agent_accueil WITH GRANT OPTION;\nRESET SESSION AUTHORIZATION;\n"),
            ["greffe", "agent_accueil"]
        );
        assert_eq!(
            acl_roles("ALTER DEFAULT PRIVILEGES FOR ROLE bascule IN SCHEMA public GRANT SELECT ON TABLES TO lecteur, \"Mairie\";\n"),
            ["bascule", "lecteur", "Mairie"]
        );
        assert_eq!(acl_roles("GRANT USAGE ON SCHEMA s TO GROUP compta;"), ["compta"]);
        assert_eq!(acl_roles("COMMENT ON TABLE t IS 'GRANT x TO y';"), Vec::<String>::new());
        assert_eq!(acl_roles("GRANT ALL ON FUNCTION f('TO') TO Admin_Local"), ["admin_local"]);
        // whatever bytes: no panic
        for junk in ["\"", "'", "GRANT", "SET SESSION AUTHORIZATION", "ALTER DEFAULT PRIVILEGES FOR ROLE", ";;;TO"] {
            let _ = acl_roles(junk);
        }
    }
}
