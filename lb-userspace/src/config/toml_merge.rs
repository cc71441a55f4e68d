//! Comment-preserving edits of the operator's config file. The daemon saves an API change by
//! editing the file where the old and the new config differ, instead of re-serialising the
//! whole config (which loses the operator's comments, order and layout).
//!
//! What is kept: every key whose value did not change, exactly as written (or absent, when it
//! was left to its default); the position, comments and decoration of a changed key; the
//! style of tables (`[x]`, `[[x]]`, `{ .. }`).
//!
//! Arrays of tables are matched element by element by their `name` (else by index). A
//! removed element goes with the comment lines right above it; a new one is written after
//! the element before it in `after` (at the end, for an append), its keys in the order and
//! its sub-tables in the style of the last kept element, all its fields written (defaults
//! included: `before` says nothing about them). A renamed element (no element of `after` has
//! its name, and the one at its index matches no element of the file) is edited in place,
//! keeping its position and comments. An array whose kept elements `after` reorders is
//! rewritten whole (the API never does that).
use toml::Value as Toml;
use toml_edit::{Array, DocumentMut, Item, Key, RawString, Table, TableLike, TomlError, Value};

/// `text`, the file as the operator wrote it, edited so that only what differs between
/// `before` and `after` changes. `before` is the config `text` means and `after` the new
/// one, both serialised with all their fields, defaults included
/// (`toml::Table::try_from(&config)`).
pub fn edit_document(
    text: &str,
    before: &toml::Table,
    after: &toml::Table,
) -> Result<String, TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    if before == after {
        return Ok(text.to_owned());
    }
    edit_table(doc.as_table_mut(), true, before, after);
    Ok(doc.to_string())
}

/// Edit a table (`[x]` or `{ .. }`) key by key. `root`: the document's top level, where new
/// tables are written `[x]` and new arrays of tables `[[x]]`; deeper, new ones are inline.
fn edit_table(t: &mut dyn TableLike, root: bool, before: &toml::Table, after: &toml::Table) {
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        t.remove(key);
    }
    for (key, a) in after {
        let b = before.get(key);
        if b == Some(a) {
            continue;
        }
        if let Some(item) = t.get_mut(key) {
            edit_item(item, b, a);
            continue;
        }
        // Not in the file: `b` was a default (or there was no such key). A table is written
        // with only the fields that differ from the default one.
        let item = match (b, a) {
            (Some(Toml::Table(b)), Toml::Table(a)) => {
                let mut item = new_item(&Toml::Table(toml::Table::new()), root);
                edit_table(item.as_table_like_mut().expect("a table"), false, b, a);
                item
            }
            _ => new_item(a, root),
        };
        t.insert(key, item);
    }
}

/// Edit the file's item of a key from `b` (what it means) to `a`.
fn edit_item(item: &mut Item, b: Option<&Toml>, a: &Toml) {
    if let (Some(Toml::Table(b)), Toml::Table(a)) = (b, a)
        && let Some(t) = item.as_table_like_mut()
    {
        return edit_table(t, false, b, a);
    }
    if let (Some(Toml::Array(b)), Toml::Array(a)) = (b, a)
        && edit_tables(item, b, a)
    {
        return;
    }
    match item {
        Item::Value(v) => set_value(v, b, a),
        // A table becoming something else, or an array of tables that could not be edited
        // element by element: rewritten, in its style.
        _ => *item = new_item(a, item.is_table() || item.is_array_of_tables()),
    }
}

/// Edit an array of tables (`[[x]]` or `[{ .. }, ..]`) element by element, in the order
/// of `a`. An element of the file becomes the element of `a` with its `name` (else its
/// index), or else the unmatched one at its index (a rename keeps its place and comments);
/// it is removed when there is none. False (and nothing done) when `item` is not such an
/// array holding `b`, or when `a` reorders the elements it keeps.
fn edit_tables(item: &mut Item, b: &[Toml], a: &[Toml]) -> bool {
    fn tables(v: &[Toml]) -> Option<Vec<&toml::Table>> {
        v.iter().map(Toml::as_table).collect()
    }
    fn key<'t>((i, t): (usize, &&'t toml::Table)) -> Result<&'t str, usize> {
        t.get("name").and_then(Toml::as_str).ok_or(i)
    }
    let (Some(bt), Some(at)) = (tables(b), tables(a)) else {
        return false;
    };
    let bk: Vec<_> = bt.iter().enumerate().map(key).collect();
    let ak: Vec<_> = at.iter().enumerate().map(key).collect();
    let mut to: Vec<_> = bk.iter().map(|k| ak.iter().position(|x| x == k)).collect();
    for (i, to) in to.iter_mut().enumerate() {
        if to.is_none() && i < a.len() && !bk.contains(&ak[i]) {
            *to = Some(i);
        }
    }
    let kept: Vec<usize> = to.iter().flatten().copied().collect();
    if !kept.is_sorted() {
        return false; // the API appends and removes; a reordered array is rewritten whole
    }
    match item {
        Item::ArrayOfTables(aot) if aot.len() == b.len() => {
            let mut slots: Vec<Option<Table>> = vec![None; a.len()];
            // Unmatched elements are dropped with the comment lines above their headers, but
            // not those set off by a blank line (the file's header comment, say): the next
            // element gets them.
            let mut detached = String::new();
            for (i, mut t) in std::mem::take(aot).into_iter().enumerate() {
                let prefix = t.decor().prefix().and_then(RawString::as_str).unwrap_or("");
                if let Some(j) = to[i] {
                    if detached.contains('#') {
                        let prefix = std::mem::take(&mut detached) + prefix;
                        t.decor_mut().set_prefix(prefix);
                    }
                    edit_table(&mut t, false, bt[i], at[j]);
                    slots[j] = Some(t);
                } else if let Some(blank) = prefix.rfind("\n\n") {
                    detached += &prefix[..=blank];
                }
            }
            let like = slots.iter().flatten().last().cloned();
            for (j, slot) in slots.into_iter().enumerate() {
                // A new table has no document position: it is written after the one before.
                aot.push(slot.unwrap_or_else(|| {
                    let new = Item::Value(value(&Toml::Table(at[j].clone())));
                    let mut new = new.into_table().expect("a table");
                    if let Some(like) = &like {
                        style_like(&mut new, like);
                    }
                    new
                }));
            }
        }
        Item::Value(Value::Array(arr))
            if arr.len() == b.len() && arr.iter().all(Value::is_inline_table) =>
        {
            for (i, to) in to.iter().enumerate().rev() {
                let el = arr.get_mut(i).and_then(Value::as_inline_table_mut);
                match to {
                    Some(j) => edit_table(el.expect("an inline table"), false, bt[i], at[*j]),
                    None => remove(arr, i),
                }
            }
            // `arr` now holds the kept elements, in order: insert the new ones.
            for (j, t) in at.iter().enumerate().filter(|(j, _)| !kept.contains(j)) {
                let mut new = value(&Toml::Table((*t).clone()));
                if let Some(like) = arr.iter().last() {
                    order_like(&mut new, like);
                }
                if j == arr.len() {
                    push(arr, new);
                } else {
                    arr.insert(j, new);
                }
            }
        }
        _ => return false,
    }
    true
}

/// Replace a value, keeping its decor (the spaces and the comment beside it). An array of
/// scalars is edited element by element, so that a multi-line array keeps its layout.
fn set_value(v: &mut Value, b: Option<&Toml>, a: &Toml) {
    if let (Value::Array(arr), Some(Toml::Array(b)), Toml::Array(a)) = (&mut *v, b, a)
        && arr.len() == b.len()
    {
        while arr.len() > a.len() {
            remove(arr, arr.len() - 1);
        }
        for (i, x) in a.iter().enumerate() {
            match arr.get_mut(i) {
                Some(old) if b.get(i) != Some(x) => set_value(old, b.get(i), x),
                Some(_) => {}
                None => push(arr, value(x)),
            }
        }
        return;
    }
    let decor = v.decor().clone();
    *v = value(a);
    *v.decor_mut() = decor;
}

/// Append to an array with the decor of its last element (its line break and indent in a
/// multi-line array); the first element's decor has no leading space, so not that one.
fn push(arr: &mut Array, mut v: Value) {
    match arr.iter().last() {
        Some(last) if arr.len() > 1 => {
            *v.decor_mut() = last.decor().clone();
            arr.push_formatted(v);
        }
        _ => arr.push(v),
    }
}

/// Remove an element; the next one takes the first's place and its leading whitespace.
fn remove(arr: &mut Array, i: usize) {
    let gone = arr.remove(i);
    if i == 0
        && let Some(next) = arr.get_mut(0)
    {
        let prefix = gone.decor().prefix().cloned().unwrap_or_default();
        next.decor_mut().set_prefix(prefix);
    }
}

/// `v` as a new item: inline, or as `[x]`/`[[x]]` when `standard` and it is a table or a
/// (non-empty) array of tables.
fn new_item(v: &Toml, standard: bool) -> Item {
    let item = Item::Value(value(v));
    if !standard {
        return item;
    }
    match item.into_table() {
        Ok(t) => Item::Table(t),
        Err(item) => item
            .into_array_of_tables()
            .map_or_else(|item| item, Item::ArrayOfTables),
    }
}

/// Give a new `[[x]]` element the style of `like`, the element before it: its keys in the
/// same order, and `[x.y]`/`[[x.y]]` sub-tables where `like` has them (inline elsewhere).
fn style_like(t: &mut Table, like: &Table) {
    let keys: Vec<_> = like.iter().map(|(k, _)| k.to_owned()).collect();
    t.sort_values_by(|k1, _, k2, _| rank(&keys, k1).cmp(&rank(&keys, k2)));
    for (key, item) in t.iter_mut() {
        let v = std::mem::take(item);
        *item = match like.get(key.get()) {
            Some(Item::Table(l)) => v.into_table().map_or_else(
                |v| v,
                |mut sub| {
                    style_like(&mut sub, l);
                    Item::Table(sub)
                },
            ),
            Some(Item::ArrayOfTables(l)) => v.into_array_of_tables().map_or_else(
                |v| v,
                |mut subs| {
                    if let Some(l) = l.iter().last() {
                        subs.iter_mut().for_each(|s| style_like(s, l));
                    }
                    Item::ArrayOfTables(subs)
                },
            ),
            Some(Item::Value(l)) => {
                let mut v = v;
                if let Some(v) = v.as_value_mut() {
                    order_like(v, l);
                }
                v
            }
            _ => v,
        };
    }
}

/// Order a new inline table's keys like those of `like`, an older sibling, all the way down
/// (the elements of an array like its last element).
fn order_like(v: &mut Value, like: &Value) {
    match (v, like) {
        (Value::InlineTable(t), Value::InlineTable(like)) => {
            let keys: Vec<_> = like.iter().map(|(k, _)| k.to_owned()).collect();
            t.sort_values_by(|k1, _, k2, _| rank(&keys, k1).cmp(&rank(&keys, k2)));
            for (k, v) in t.iter_mut() {
                if let Some(l) = like.get(k.get()) {
                    order_like(v, l);
                }
            }
        }
        (Value::Array(arr), Value::Array(like)) => {
            if let Some(l) = like.iter().last() {
                arr.iter_mut().for_each(|v| order_like(v, l));
            }
        }
        _ => {}
    }
}

/// Where `key` comes in `keys`; keys not there go last (in their own order: the sort is
/// stable).
fn rank(keys: &[String], key: &Key) -> usize {
    keys.iter()
        .position(|k| k == key.get())
        .unwrap_or(usize::MAX)
}

fn value(v: &Toml) -> Value {
    match v {
        Toml::String(s) => s.as_str().into(),
        Toml::Integer(i) => (*i).into(),
        Toml::Float(f) => (*f).into(),
        Toml::Boolean(b) => (*b).into(),
        Toml::Datetime(d) => (*d).into(),
        Toml::Array(a) => Value::Array(a.iter().map(value).collect()),
        Toml::Table(t) => {
            Value::InlineTable(t.iter().map(|(k, v)| (k.as_str(), value(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Config, Servers};

    /// The demo config with comments in all the places an operator puts them.
    const FILE: &str = r#"# lb for the demo topology

[[frontends]]
name = "web"           # the public site
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }, { port = 443 }]
default_backend = "web"

# DNS, to be retired
# once the new resolvers are up.
[[frontends]]
name = "dns"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 53, protocol = "udp" }]
default_backend = "dns"

# Web servers: keep s3 light.
[[backends]]
name = "web"
mode = "tcp"
balancing_method = "maglev"   # consistent
port = 8080
servers = { type = "addresses", addresses = [
  { address = "198.18.11.2", weight = 1 },
  { address = "198.18.12.2", weight = 1 },   # new hardware
  { address = "198.18.13.2", weight = 2 },
] }

[[backends]]
name = "dns"
mode = "tcp"
balancing_method = "source"
port = 53
servers = { type = "addresses", addresses = [{ address = "198.18.21.2" }] }
"#;

    /// `FILE` edited by `change` to its config, and checked to mean the changed config.
    fn edit(change: impl FnOnce(&mut Config)) -> String {
        let mut config: Config = toml::from_str(FILE).unwrap();
        let before = toml::Table::try_from(&config).unwrap();
        change(&mut config);
        let after = toml::Table::try_from(&config).unwrap();
        let text = edit_document(FILE, &before, &after).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config, "{text}");
        text
    }

    /// `FILE` with `from` replaced once by `to`.
    fn replaced(from: &str, to: &str) -> String {
        assert_eq!(FILE.matches(from).count(), 1, "{from:?}");
        FILE.replacen(from, to, 1)
    }

    fn backend<'c>(config: &'c mut Config, name: &str) -> &'c mut Backend {
        config.backends.iter_mut().find(|b| b.name == name).unwrap()
    }

    #[test]
    fn an_unchanged_file_round_trips_byte_for_byte() {
        assert_eq!(edit(|_| {}), FILE);
        // Also when toml_edit has to render the document.
        let config: Config = toml::from_str(FILE).unwrap();
        let before = toml::Table::try_from(&config).unwrap();
        let mut doc: DocumentMut = FILE.parse().unwrap();
        edit_table(doc.as_table_mut(), true, &before, &before);
        assert_eq!(doc.to_string(), FILE);
    }

    #[test]
    fn a_changed_scalar_keeps_its_place_and_comments() {
        let text = edit(|c| backend(c, "web").balancing_method = crate::config::Method::Roundrobin);
        assert_eq!(
            text,
            replaced(
                r#"balancing_method = "maglev"   # consistent"#,
                r#"balancing_method = "roundrobin"   # consistent"#
            )
        );
    }

    #[test]
    fn a_renamed_element_is_edited_in_place() {
        // No element of `after` has its name, and the one at its index has no match either.
        let text = edit(|c| c.frontends[0].name = "www".into());
        assert_eq!(
            text,
            replaced(r#"name = "web"           #"#, r#"name = "www"           #"#)
        );
    }

    #[test]
    fn one_servers_weight_changes_only_that_number() {
        let text = edit(|c| {
            let Servers::Addresses { addresses } = &mut backend(c, "web").servers else {
                panic!("addresses")
            };
            addresses[1].weight = 5;
        });
        assert_eq!(
            text,
            replaced(
                r#""198.18.12.2", weight = 1 },"#,
                r#""198.18.12.2", weight = 5 },"#
            )
        );
    }

    #[test]
    fn arrays_of_scalars_and_inline_tables_are_edited_in_place() {
        let text = edit(|c| {
            c.frontends[0].binds.remove(0);
            c.frontends[0].interfaces = vec!["eth0".into()];
        });
        let expected = replaced(
            "binds = [{ port = 80 }, { port = 443 }]\n",
            "binds = [{ port = 443 }]\n",
        );
        // `interfaces` was a default (empty) not in the file: added at the end of its table.
        let expected = expected.replacen(
            "default_backend = \"web\"\n",
            "default_backend = \"web\"\ninterfaces = [\"eth0\"]\n",
            1,
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn adding_a_backend_appends_a_backends_table_in_the_same_style() {
        let text = edit(|c| {
            let mut new = c.backends[1].clone();
            new.name = "ntp".into();
            new.options.table_size = Some(4093);
            c.backends.push(new);
        });
        let added = "\n[[backends]]\nname = \"ntp\"\nmode = \"tcp\"\nbalancing_method = \
                     \"source\"\nport = 53\nservers = { type = \"addresses\", addresses = \
                     [{ address = \"198.18.21.2\", weight = 1 }] }\noptions = { \
                     table_size = 4093 }\n";
        assert_eq!(text, format!("{FILE}{added}"));
    }

    #[test]
    fn a_new_element_follows_the_last_of_its_array_and_copies_its_sub_tables() {
        let text = edit(|c| {
            let mut new = c.frontends[1].clone();
            new.name = "ntp".into();
            c.frontends.push(new);
        });
        let dns = FILE.find("# Web servers").unwrap();
        let added = "[[frontends]]\nname = \"ntp\"\nmode = \"tcp\"\naddress = \"198.18.100.1\"\n\
                     binds = [{ port = 53, protocol = \"udp\" }]\ndefault_backend = \"dns\"\n\
                     acls = []\nbackends = []\nforwarding = \"nat\"\ninterfaces = []\n\
                     options = { trusted_proxies = [] }\n\n";
        assert_eq!(text, format!("{}{added}{}", &FILE[..dns], &FILE[dns..]));

        // `[backends.options]` in the file: a new backend's options are written so too.
        let file = "[[backends]]\nname = \"a\"\nmode = \"tcp\"\nbalancing_method = \"first\"\n\
                    port = 1\nservers = { type = \"computer\", computer_ids = [] }\n\
                    [backends.options]\ntable_size = 101\n";
        let mut config: Config = toml::from_str(file).unwrap();
        let before = toml::Table::try_from(&config).unwrap();
        let mut new = config.backends[0].clone();
        new.name = "b".into();
        config.backends.push(new);
        let after = toml::Table::try_from(&config).unwrap();
        let text = edit_document(file, &before, &after).unwrap();
        let added = "\n[[backends]]\nname = \"b\"\nmode = \"tcp\"\nbalancing_method = \"first\"\n\
                     port = 1\nservers = { type = \"computer\", computer_ids = [] }\n\
                     \n[backends.options]\ntable_size = 101\n";
        assert_eq!(text, format!("{file}{added}"));
    }

    #[test]
    fn a_reordered_array_is_rewritten_in_the_new_order() {
        let text = edit(|c| c.backends.reverse());
        assert!(
            text.find("name = \"dns\"\nmode = \"tcp\"\nbalancing_method") < text.find("\"maglev\"")
        );
        assert!(
            text.starts_with(&FILE[..FILE.find("# Web servers").unwrap()]),
            "{text}"
        );
    }

    #[test]
    fn deleting_a_frontend_removes_it_and_its_comment_block() {
        let text = edit(|c| {
            c.frontends.retain(|f| f.name != "dns");
        });
        let start = FILE.find("# DNS").unwrap();
        let end = FILE.find("# Web servers").unwrap();
        assert_eq!(text, format!("{}{}", &FILE[..start], &FILE[end..]));
        // The first one: the file's header comment, set off by a blank line, stays.
        let text = edit(|c| {
            c.frontends.remove(0);
        });
        let start = FILE.find("[[frontends]]").unwrap();
        let end = FILE.find("# DNS").unwrap();
        assert_eq!(text, format!("{}{}", &FILE[..start], &FILE[end..]));
    }

    #[test]
    fn defaults_not_in_the_file_stay_absent() {
        // `before` holds `[dataplane]`, `[http]`, `forwarding = "nat"`... with their default
        // values; changing something else writes none of them.
        let text = edit(|c| backend(c, "dns").port = crate::config::Port::new(5353));
        assert_eq!(text, replaced("port = 53\n", "port = 5353\n"));
        // Changing one field of a default table writes that field alone.
        let text = edit(|c| c.http.workers += 1);
        let workers = toml::from_str::<Config>(&text).unwrap().http.workers;
        assert_eq!(text, format!("{FILE}\n[http]\nworkers = {workers}\n"));
    }

    #[test]
    fn removed_keys_are_removed_and_new_table_fields_inserted_inline() {
        let with_size = replaced(
            "port = 53\n",
            "port = 53\noptions = { table_size = 4093 }  # M\n",
        );
        let mut config: Config = toml::from_str(&with_size).unwrap();
        let before = toml::Table::try_from(&config).unwrap();
        backend(&mut config, "dns").options.table_size = None;
        backend(&mut config, "dns").options.tls = Some(false);
        let after = toml::Table::try_from(&config).unwrap();
        let text = edit_document(&with_size, &before, &after).unwrap();
        assert_eq!(
            text,
            replaced("port = 53\n", "port = 53\noptions = { tls = false }  # M\n")
        );
    }
}
