//! Where a field path such as `backends[0].servers.addresses[2].weight` is in the TOML
//! text, so that errors name file:line.

pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Byte offset of a field path such as `backends[0].servers.addresses[2].weight`, or of its
/// closest existing ancestor.
pub fn locate(doc: &toml_edit::Document<&str>, path: &str) -> Option<usize> {
    use toml_edit::{Item, Table, Value};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Table(&'a Table),
        Item(&'a Item),
        Value(&'a Value),
    }
    impl<'a> Node<'a> {
        fn span(self) -> Option<usize> {
            match self {
                Node::Table(t) => t.span(),
                Node::Item(i) => i.span(),
                Node::Value(v) => v.span(),
            }
            .map(|s| s.start)
        }
        fn key(self, k: &str) -> Option<Node<'a>> {
            match self {
                Node::Table(t) | Node::Item(Item::Table(t)) => t.get(k).map(Node::Item),
                Node::Item(Item::Value(Value::InlineTable(t)))
                | Node::Value(Value::InlineTable(t)) => t.get(k).map(Node::Value),
                _ => None,
            }
        }
        fn index(self, i: usize) -> Option<Node<'a>> {
            match self {
                Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                    a.get(i).map(Node::Value)
                }
                _ => None,
            }
        }
    }
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for part in path.split('.') {
        let (key, indices) = match part.find('[') {
            Some(b) => (&part[..b], &part[b..]),
            None => (part, ""),
        };
        let Some(next) = node.key(key) else { break };
        node = next;
        best = node.span().or(best);
        for idx in indices
            .split(['[', ']'])
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
        {
            let Some(next) = node.index(idx) else {
                return best;
            };
            node = next;
            best = node.span().or(best);
        }
    }
    best
}
