//! Compiles `proto/` with protox (pure Rust, no system protoc) and generates prost + tonic code.
//!
//! Client-protocol messages also get serde derives so that `protocol::json` can speak
//! Centrifugo's JSON dialect: snake_case names, zero values omitted (except the few fields
//! Centrifugo always writes), and `bytes` fields embedded as raw JSON.

use prost_types::field_descriptor_proto::{Label, Type};

const CLIENT_PACKAGE: &str = "sidewire.client.v2";

/// Fields Centrifugo writes even when they hold a zero value.
const ALWAYS_WRITTEN: &[&str] = &[
    "ClientInfo.user",
    "ClientInfo.client",
    "PresenceResult.presence",
    "PresenceStatsResult.num_clients",
    "PresenceStatsResult.num_users",
    "HistoryResult.publications",
    "HistoryResult.epoch",
    "HistoryResult.offset",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["sidewire/v1/client.proto", "sidewire/v1/link.proto"],
        ["proto"],
    )?;

    let mut config = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".");

    for file in fds.file.iter().filter(|f| f.package() == CLIENT_PACKAGE) {
        for message in &file.message_type {
            let message_path = format!(".{CLIENT_PACKAGE}.{}", message.name());
            config = config.type_attribute(
                &message_path,
                "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
            );
            for field in &message.field {
                let key = format!("{}.{}", message.name(), field.name());
                let field_path = format!("{message_path}.{}", field.name());
                let is_message = field.r#type() == Type::Message;
                let is_repeated = field.label() == Label::Repeated;
                let attribute = if field.r#type() == Type::Bytes {
                    "#[serde(skip_serializing_if = \"::bytes::Bytes::is_empty\", with = \"crate::protocol::json::raw\")]"
                } else if ALWAYS_WRITTEN.contains(&key.as_str()) {
                    continue;
                } else if is_message && !is_repeated {
                    "#[serde(skip_serializing_if = \"Option::is_none\")]"
                } else {
                    "#[serde(skip_serializing_if = \"crate::protocol::json::is_default\")]"
                };
                config = config.field_attribute(&field_path, attribute);
            }
        }
    }

    config.compile_fds(fds)?;
    Ok(())
}
