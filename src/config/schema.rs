//! The set of config keys, derived from the typed schema itself (no hand-kept list).
//!
//! [`leaves`] runs a type's `Deserialize` impl against a recording deserializer: every struct
//! reports its field names (serde passes them to `deserialize_struct`), every field reports
//! the kind of value it asks for. A new field of any config struct therefore shows up here
//! (and gets its `SIDEWIRE_*` variable) without further work.
//!
//! A field whose `Deserialize` rejects the probe value is retried with the next candidate
//! string (a duration, an address, a URL, plain text), so typed strings such as `SocketAddr`
//! or durations are traced too.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::value::{Error, MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// What kind of value a config key takes (how an environment string is converted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` / `false`.
    Bool,
    /// A whole number.
    Integer,
    /// A number with a fraction.
    Float,
    /// A string, including durations, addresses, URLs and enum names.
    Text,
    /// A list.
    List,
    /// A map without a fixed set of keys, or anything self-describing.
    Other,
}

/// The traced schema: scalar-or-list leaves and struct sections, by dotted path.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Every leaf key (not a struct) with its kind, e.g. `"hub.http_api.key" → Text`.
    pub leaves: BTreeMap<String, Kind>,
    /// Every struct section, e.g. `"hub"`, `"hub.tls"` (the root is `""`).
    pub sections: BTreeMap<String, Vec<&'static str>>,
}

/// Probe strings tried in order for a string-typed field until its `Deserialize` accepts one.
const TEXT_CANDIDATES: &[&str] = &["0s", "127.0.0.1:0", "http://127.0.0.1:1", "x", "0", "true"];
/// Upper bound of trace attempts (each rejected probe costs one).
const MAX_ATTEMPTS: usize = 512;

/// Traces the keys of `T` (a `#[serde(default)]` config struct).
pub fn trace<T: DeserializeOwned>() -> Schema {
    let state = RefCell::new(State::default());
    for _ in 0..MAX_ATTEMPTS {
        state.borrow_mut().failed = None;
        let outcome = T::deserialize(Tracer {
            path: "",
            state: &state,
        });
        let mut current = state.borrow_mut();
        if outcome.is_ok() {
            break;
        }
        let Some(path) = current.failed.take() else {
            break;
        };
        let choice = current.choices.entry(path.clone()).or_insert(0);
        *choice += 1;
        if *choice >= TEXT_CANDIDATES.len() {
            // No probe fits: keep the leaf as recorded, and leave the field out of later
            // attempts (its struct's default fills it) so the fields after it are traced.
            current.skipped.insert(path);
        }
    }
    state.into_inner().schema
}

#[derive(Default)]
struct State {
    schema: Schema,
    choices: HashMap<String, usize>,
    failed: Option<String>,
    skipped: HashSet<String>,
}

#[derive(Clone, Copy)]
struct Tracer<'s> {
    path: &'s str,
    state: &'s RefCell<State>,
}

impl Tracer<'_> {
    fn leaf(&self, kind: Kind) {
        self.state
            .borrow_mut()
            .schema
            .leaves
            .insert(self.path.to_owned(), kind);
    }

    /// Notes the first field whose probe was rejected, for the next attempt.
    fn checked<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            let mut state = self.state.borrow_mut();
            if state.failed.is_none() {
                state.failed = Some(self.path.to_owned());
            }
        }
        result
    }

    fn text<'de, V: Visitor<'de>>(self, kind: Kind, visitor: V) -> Result<V::Value, Error> {
        self.leaf(kind);
        let choice = self
            .state
            .borrow()
            .choices
            .get(self.path)
            .copied()
            .unwrap_or(0);
        let candidate = TEXT_CANDIDATES
            .get(choice)
            .copied()
            .unwrap_or(TEXT_CANDIDATES[0]);
        self.checked(visitor.visit_str(candidate))
    }
}

impl<'de, 's> de::Deserializer<'de> for Tracer<'s> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Other, visitor)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Bool);
        self.checked(visitor.visit_bool(false))
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_i64(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Integer);
        self.checked(visitor.visit_i64(0))
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Integer);
        self.checked(visitor.visit_u64(0))
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Float);
        self.checked(visitor.visit_f64(0.0))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Text);
        self.checked(visitor.visit_char('x'))
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Text, visitor)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Text, visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Text, visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Text, visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Other);
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::List);
        self.checked(visitor.visit_seq(SeqDeserializer::<_, Error>::new(std::iter::empty::<()>())))
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.leaf(Kind::Other);
        self.checked(
            visitor.visit_map(MapDeserializer::<_, Error>::new(
                std::iter::empty::<((), ())>(),
            )),
        )
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.state
            .borrow_mut()
            .schema
            .sections
            .insert(self.path.to_owned(), fields.to_vec());
        visitor.visit_map(Fields {
            fields,
            next: 0,
            parent: self.path,
            current: String::new(),
            state: self.state,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf(Kind::Text);
        let first = variants.first().copied().unwrap_or_default();
        self.checked(visitor.visit_enum(first.into_deserializer()))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.text(Kind::Text, visitor)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// Presents every field of a struct once, each value traced at `parent.field`.
struct Fields<'s> {
    fields: &'static [&'static str],
    next: usize,
    parent: &'s str,
    current: String,
    state: &'s RefCell<State>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        loop {
            let Some(field) = self.fields.get(self.next).copied() else {
                return Ok(None);
            };
            self.next += 1;
            self.current = if self.parent.is_empty() {
                field.to_owned()
            } else {
                format!("{}.{field}", self.parent)
            };
            if !self.state.borrow().skipped.contains(&self.current) {
                return seed.deserialize(field.into_deserializer()).map(Some);
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        seed.deserialize(Tracer {
            path: &self.current,
            state: self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn config_keys_are_traced_with_their_kinds() {
        let schema = trace::<Config>();
        let kind = |path: &str| schema.leaves.get(path).copied();
        assert_eq!(kind("listen"), Some(Kind::Text), "{schema:?}");
        assert_eq!(kind("ping_interval"), Some(Kind::Text));
        assert_eq!(kind("websocket"), Some(Kind::Bool));
        assert_eq!(kind("queue_max_size"), Some(Kind::Integer));
        assert_eq!(kind("allowed_origins"), Some(Kind::List));
        assert_eq!(kind("hub.http_api.key"), Some(Kind::Text));
        assert_eq!(kind("hub.client.token.hmac_secret_key"), Some(Kind::Text));
        assert_eq!(kind("hub.channel.max_length"), Some(Kind::Integer));
        assert_eq!(kind("hub.tls.cert_file"), Some(Kind::Text));
        assert_eq!(kind("backend.url"), Some(Kind::Text));
        assert_eq!(kind("shutdown.drain_window"), Some(Kind::Text));
        assert_eq!(kind("log.format"), Some(Kind::Text));
        assert!(schema.sections.contains_key("upstream"));
        assert!(
            !schema.leaves.contains_key("hub"),
            "sections are not leaves"
        );
    }

    /// A type no probe satisfies.
    #[derive(Debug, Default)]
    struct Picky;

    impl<'de> serde::Deserialize<'de> for Picky {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Picky, D::Error> {
            struct Refuse;
            impl Visitor<'_> for Refuse {
                type Value = Picky;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("nothing")
                }
            }
            deserializer.deserialize_str(Refuse)
        }
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    struct Sample {
        first: bool,
        picky: Picky,
        nested: Option<Nested>,
        last: Vec<String>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    #[allow(dead_code)]
    struct Nested {
        rate: f64,
        addr: Option<std::net::SocketAddr>,
    }

    #[test]
    fn fields_after_an_untraceable_one_are_traced() {
        let schema = trace::<Sample>();
        let kinds: Vec<(&str, Kind)> = schema
            .leaves
            .iter()
            .map(|(path, kind)| (path.as_str(), *kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("first", Kind::Bool),
                ("last", Kind::List),
                ("nested.addr", Kind::Text),
                ("nested.rate", Kind::Float),
                ("picky", Kind::Text),
            ]
        );
    }

    #[test]
    fn every_leaf_of_every_section_is_traced() {
        // A field whose probe failed would stop its struct's trace early: every field name
        // of every traced section must be a leaf or a section itself.
        let schema = trace::<Config>();
        for (section, fields) in &schema.sections {
            for field in fields {
                let path = if section.is_empty() {
                    (*field).to_owned()
                } else {
                    format!("{section}.{field}")
                };
                assert!(
                    schema.leaves.contains_key(&path) || schema.sections.contains_key(&path),
                    "{path} not traced"
                );
            }
        }
    }
}
