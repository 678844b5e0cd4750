//! The roles a dump needs on the server it is restored to: each object's
//! owner (a field of its table-of-contents entry) and the roles named in its
//! privileges (`ACL` and `DEFAULT ACL` entries, whose definition is the SQL
//! pg_dump wrote: `GRANT … TO r;`, `REVOKE … FROM r;`, `SET SESSION
//! AUTHORIZATION r;`, `ALTER DEFAULT PRIVILEGES FOR ROLE r …`). A restore
//! checks them before it starts, so that a missing role is reported with
//! the list to create instead of failing half way.
// Parses what a source wrote: total, no panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
use std::ops::Range;

/// A token of pg_dump's SQL: a bare word, a quoted identifier (as
/// written, quotes undone), a string literal, or punctuation; with where it
/// stands in the text.
#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Literal,
    Punct(char),
}

fn tokens(sql: &str) -> Vec<(Tok, Range<usize>)> {
    let mut out = Vec::new();
    let mut it = sql.char_indices().peekable();
    while let Some((at, c)) = it.next() {
        let tok = match c {
            c if c.is_whitespace() => continue,
            '"' | '\'' => {
                let mut s = String::new();
                while let Some((_, n)) = it.next() {
                    if n == c {
                        if it.peek().map(|p| p.1) == Some(c) {
                            it.next();
                        } else {
                            break;
                        }
                    }
                    s.push(n);
                }
                if c == '"' {
                    Tok::Quoted(s)
                } else {
                    Tok::Literal
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&(_, n)) = it.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '$') {
                        break;
                    }
                    s.push(n);
                    it.next();
                }
                Tok::Word(s)
            }
            c => Tok::Punct(c),
        };
        let end = it.peek().map(|p| p.0).unwrap_or(sql.len());
        out.push((tok, at..end));
    }
    out
}

fn is_word(t: &(Tok, Range<usize>), w: &str) -> bool {
    matches!(&t.0, Tok::Word(s) if s.eq_ignore_ascii_case(w))
}

/// The role a token names, with where: a quoted identifier as written, a
/// bare one folded to lower case as PostgreSQL does; `PUBLIC` is no role.
fn role(t: &(Tok, Range<usize>)) -> Option<(String, Range<usize>)> {
    match &t.0 {
        Tok::Quoted(s) => Some((s.clone(), t.1.clone())),
        Tok::Word(s) if !s.eq_ignore_ascii_case("public") => Some((s.to_lowercase(), t.1.clone())),
        _ => None,
    }
}

/// The roles of a comma-separated list, up to what follows it: `USING`
/// or `WITH` (a policy's expressions, `WITH GRANT OPTION`), `GRANTED BY`, or
/// `CASCADE`/`RESTRICT` as the statement's last word after a role (not
/// after a comma). pg_dump writes
/// unreserved keywords unquoted, so a role may be named `cascade` or
/// `granted`: only those places end the list.
fn role_list(list: &[(Tok, Range<usize>)], out: &mut Vec<(String, Range<usize>)>) {
    for (i, t) in list.iter().enumerate() {
        let next = list.get(i + 1);
        let ends = is_word(t, "USING")
            || is_word(t, "WITH")
            || (is_word(t, "GRANTED") && next.is_some_and(|n| is_word(n, "BY")))
            || ((is_word(t, "CASCADE") || is_word(t, "RESTRICT"))
                && next.is_none()
                && i.checked_sub(1).and_then(|p| list.get(p)).is_some_and(|p| p.0 != Tok::Punct(',')));
        if ends {
            break;
        }
        if is_word(t, "GROUP") && next.is_some_and(|n| n.0 != Tok::Punct(',')) {
            continue;
        }
        out.extend(role(t));
    }
}

/// The roles named in the SQL of an `ACL`, `DEFAULT ACL` or `POLICY`
/// entry (`desc`), with where each stands.
pub fn role_spans(desc: &str, sql: &str) -> Vec<(String, Range<usize>)> {
    let mut roles = Vec::new();
    let toks = tokens(sql);
    for stmt in toks.split(|t| t.0 == Tok::Punct(';')) {
        let Some(first) = stmt.first() else { continue };
        if desc == "POLICY" {
            // CREATE POLICY p ON t [AS …] [FOR …] [TO r, …] [USING (…)] [WITH CHECK (…)]:
            // a TO inside the expressions (an interval's `year to month`) is not the roles'
            let head = stmt.iter().position(|t| is_word(t, "USING") || is_word(t, "WITH")).unwrap_or(stmt.len());
            if let Some(at) = stmt.get(..head).unwrap_or_default().iter().position(|t| is_word(t, "TO")) {
                role_list(stmt.get(at + 1..head).unwrap_or_default(), &mut roles);
            }
            continue;
        }
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
        role_list(rest.get(at + 1..).unwrap_or_default(), &mut roles);
    }
    roles
}

#[cfg(test)]
/// The roles named in an `ACL` or `DEFAULT ACL` entry's SQL.
pub fn acl_roles(sql: &str) -> Vec<String> {
    role_spans("ACL", sql).into_iter().map(|(r, _)| r).collect()
}

/// `sql` with every role `map` names replaced (quoted) by its new name.
pub fn map_roles(desc: &str, sql: &str, map: &std::collections::BTreeMap<String, String>) -> String {
    let mut spans = role_spans(desc, sql);
    spans.sort_by_key(|(_, at)| at.start);
    spans.dedup_by_key(|(_, at)| at.start);
    // built forward, each span once and after the last: never a panic
    let mut out = String::with_capacity(sql.len());
    let mut done = 0;
    for (r, at) in spans {
        let (Some(new), Some(before)) = (map.get(&r), sql.get(done..at.start)) else { continue };
        if at.start < done {
            continue;
        }
        out.push_str(before);
        out.push_str(&super::super::quote_ident(new));
        done = at.end;
    }
    out.push_str(sql.get(done..).unwrap_or_default());
    out
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
        // unreserved keywords pg_dump writes unquoted, as role names
        assert_eq!(
            acl_roles("GRANT SELECT ON TABLE t TO cascade, granted, \"group\", restrict;"),
            ["cascade", "granted", "group", "restrict"]
        );
        assert_eq!(acl_roles("REVOKE ALL ON TABLE t FROM greffe CASCADE;"), ["greffe"]);
        assert_eq!(acl_roles("GRANT r1 TO r2 GRANTED BY r3;"), ["r2"]);
        // a policy for PUBLIC: the TO of an interval is no role
        assert!(role_spans("POLICY", "CREATE POLICY p ON t USING ((d > (now() - '1 year'::interval year to month)));").is_empty());
        assert_eq!(acl_roles("COMMENT ON TABLE t IS 'GRANT x TO y';"), Vec::<String>::new());
        assert_eq!(acl_roles("GRANT ALL ON FUNCTION f('TO') TO Admin_Local"), ["admin_local"]);
        assert_eq!(role_spans("POLICY", "CREATE POLICY p ON public.t FOR SELECT TO accueil, \"Élus\" USING ((commune = 'x'));").len(), 2);
        let map: std::collections::BTreeMap<String, String> =
            [("lecteur".to_string(), "Lecture Mairie".to_string()), ("greffe".into(), "greffe2".into())].into();
        assert_eq!(
            map_roles("ACL", "SET SESSION AUTHORIZATION greffe;\nGRANT SELECT ON TABLE public.lecteur TO lecteur;\nRESET SESSION AUTHORIZATION;", &map),
            "SET SESSION AUTHORIZATION \"greffe2\";\nGRANT SELECT ON TABLE public.lecteur TO \"Lecture Mairie\";\nRESET SESSION AUTHORIZATION;"
        );
        // whatever bytes: no panic
        for junk in ["\"", "'", "GRANT", "SET SESSION AUTHORIZATION", "ALTER DEFAULT PRIVILEGES FOR ROLE", ";;;TO"] {
            let _ = acl_roles(junk);
        }
    }
}
