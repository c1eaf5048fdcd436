//! How the hub runs hook calls: each in its own task, only when a place among the calls in
//! flight is free (else the command is refused at once with error 100), the outcome applied
//! to the state when the call ends. A session closed meanwhile makes the outcome moot; the
//! hook timeout bounds every call, so no session waits on a hook forever.

use std::sync::Arc;

use super::{Proxies, Refusal};
use crate::config::HubConfig;
use crate::hub::Hub;
use crate::hub::counters::HubCounters;
use crate::hub::namespace::Operation;
use crate::hub::state::{ConnectVia, ProxyGrant, SessionKey, SweepHooks};
use crate::linkproto::SessionOpen;
use crate::protocol::client::Command;

impl Proxies {
    /// The hooks of `config`, counted in `counters`; none (with a log line) when they cannot
    /// be set up (`sidewire check` refuses such a config).
    pub fn build(config: &HubConfig, counters: &HubCounters) -> Proxies {
        Proxies::new(config, counters.proxy.clone()).unwrap_or_else(|error| {
            tracing::warn!(%error, "hub: proxy hooks unusable");
            Proxies::none(counters.proxy.clone())
        })
    }
}

impl Hub {
    /// Opens a session whose connect the connect hook decides.
    pub(crate) fn open_through_hook(&self, link: u64, open: SessionOpen, proxies: Arc<Proxies>) {
        let headers = proxies.keep_headers(&open.headers);
        let Some(pending) = self.with_state(|state| state.open_pending(link, open, headers)) else {
            return;
        };
        let via = ConnectVia::Hook;
        let Some(permit) = proxies.permit("connect") else {
            return self
                .with_state(|state| state.finish_open(&pending, Err(Refusal::internal()), via));
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let outcome = proxies.connect(&pending.subject, &pending.request).await;
            drop(permit);
            // With a shared engine, the hook's server-side channels are listened to first.
            let interests = match (&outcome, hub.engine()) {
                (Ok(grant), Some(engine)) => {
                    hub.prepare_channels(&engine, &grant.claims.channels).await
                }
                _ => Vec::new(),
            };
            hub.with_state(|state| state.finish_open(&pending, outcome, via));
            drop(interests);
        });
    }

    /// Sends `command` to its hook when one decides it (subscribe, publish, rpc) and returns
    /// `None`; else gives it back for the hub's own rules.
    pub(crate) fn command_through_hook(
        &self,
        key: SessionKey,
        command: Command,
    ) -> Option<Command> {
        let proxies = self.proxies();
        let hook = match self.with_state(|state| state.channel_hook(&command)) {
            Some(Operation::Subscribe) if proxies.subscribe_enabled() => "subscribe",
            Some(Operation::Publish) if proxies.publish_enabled() => "publish",
            _ => match &command.rpc {
                Some(rpc) if proxies.rpc_proxied(&rpc.method) => "rpc",
                _ => return Some(command),
            },
        };
        // An unknown or unusable session takes the hub's own path (which disconnects it).
        let Some(subject) = self.with_state(|state| state.subject(key)) else {
            return Some(command);
        };
        let id = command.id;
        // A subscribe waits for its hook as "pending": a second subscribe to the channel meanwhile
        // answers 105, an unsubscribe cancels it (its grant is then not applied).
        let pending = command.subscribe.as_ref().map(|s| s.channel.clone());
        if let Some(channel) = &pending
            && let Err(code) = self.with_state(|state| state.begin_hook_subscribe(key, channel, id))
        {
            self.with_state(|state| state.proxied_command(key, id, Err(Refusal::code(code)), None));
            return None;
        }
        let end_pending = move |hub: &Hub| match &pending {
            Some(channel) => hub.with_state(|state| state.end_hook_subscribe(key, channel, id)),
            None => true,
        };
        let Some(permit) = proxies.permit(hook) else {
            end_pending(self);
            self.with_state(|state| state.proxied_command(key, id, Err(Refusal::internal()), None));
            return None;
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let outcome = if let Some(request) = command.subscribe {
                let outcome = proxies
                    .subscribe(&subject, &request.channel, &request.data, &request.token)
                    .await
                    .map(|grant| ProxyGrant::Subscribe(Box::new(request), grant));
                if end_pending(&hub) {
                    outcome
                } else {
                    // Cancelled by an unsubscribe: answered, never applied (a temporary
                    // error, so an SDK that subscribes again meanwhile just retries).
                    Err(Refusal::internal())
                }
            } else if let Some(request) = command.publish {
                proxies
                    .publish(&subject, &request.channel, request.data)
                    .await
                    .map(|grant| ProxyGrant::Publish(request.channel, grant))
            } else if let Some(request) = command.rpc {
                proxies
                    .rpc(&subject, &request.method, &request.data)
                    .await
                    .map(ProxyGrant::Rpc)
            } else {
                Err(Refusal::internal())
            };
            drop(permit);
            match hub.engine() {
                // A shared engine reads the stream before a granted subscribe and carries a
                // granted publish to every replica.
                Some(engine) => hub.apply_grant_shared(&engine, key, id, outcome).await,
                None => hub.with_state(|state| state.proxied_command(key, id, outcome, None)),
            }
        });
        None
    }

    /// The hub's periodic upkeep, handing expiring connections and subscriptions to the
    /// refresh and sub_refresh hooks when they are on.
    pub(crate) fn sweep(&self) {
        let proxies = self.proxies();
        let hooks = SweepHooks {
            refresh: proxies.refresh_enabled(),
            sub_refresh: proxies.sub_refresh_enabled(),
        };
        let due = self.with_state(|state| state.sweep(hooks));
        for expiring in due.refresh {
            let Some(permit) = proxies.permit("refresh") else {
                self.with_state(|state| state.finish_refresh(&expiring, Err(Refusal::internal())));
                continue;
            };
            let (hub, proxies) = (self.clone(), proxies.clone());
            tokio::spawn(async move {
                let outcome = proxies.refresh(&expiring.subject).await;
                drop(permit);
                hub.with_state(|state| state.finish_refresh(&expiring, outcome));
            });
        }
        for expiring in due.sub_refresh {
            let Some(channel) = expiring.channel.clone() else {
                continue;
            };
            let Some(permit) = proxies.permit("sub_refresh") else {
                self.with_state(|state| {
                    state.finish_sub_refresh(&expiring, Err(Refusal::internal()))
                });
                continue;
            };
            let (hub, proxies) = (self.clone(), proxies.clone());
            tokio::spawn(async move {
                let outcome = proxies.sub_refresh(&expiring.subject, &channel).await;
                drop(permit);
                hub.with_state(|state| state.finish_sub_refresh(&expiring, outcome));
            });
        }
    }
}
