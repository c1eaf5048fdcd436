// Real npm `centrifuge` SDK (JSON and Protobuf builds): publication order under bursts.
// centrifuge-js 5.7.4 reorders publications when several frames arrive in one read; 5.8.0
// does not. Many clients subscribe to one channel, the server API publishes a burst of
// consecutive publications without waiting for delivery (so the sidecar's writes coalesce
// several pushes per frame and per read), and every client must see all of them, in order.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import {
  startServer, connectClient, disconnectAll, adminPublish, withTimeout, uniqueChannel,
  toNumber, safeJson,
} from './harness.mjs';
import { jsonCodec, protobufCodec } from './suite.mjs';

const CLIENTS = 200;
const PUBLICATIONS = 20;
// Clients connected at once (keeps the connect storm within the SDK's own timeouts).
const CONNECT_BATCH = 25;
const DELIVERY_TIMEOUT_MS = 20000;

for (const [build, Ctor, codec] of [
  ['json', JsonCentrifuge, jsonCodec],
  ['protobuf', ProtobufCentrifuge, protobufCodec],
]) {
  describe(`centrifuge-js ${build}: burst ordering`, { timeout: 120000 }, () => {
    let server;
    const clients = [];
    before(async () => {
      server = await startServer();
    });
    after(async () => {
      disconnectAll(clients);
      if (server) await server.stop();
    });

    it(`${CLIENTS} subscribers each see ${PUBLICATIONS} consecutive publications in order`,
      { timeout: 110000 }, async () => {
        const channel = uniqueChannel(`burst-${build}`);
        // Per client: the offsets and payload indexes received, in arrival order.
        const received = [];
        const done = [];
        const subscribeOne = async () => {
          const c = await connectClient(Ctor, server, clients);
          const got = [];
          received.push(got);
          let finish;
          done.push(new Promise((res) => { finish = res; }));
          const sub = c.client.newSubscription(channel);
          sub.on('error', () => {});
          sub.on('publication', (ctx) => {
            got.push({ offset: toNumber(ctx.offset), i: codec.decodeJson(ctx.data).i });
            if (got.length === PUBLICATIONS) finish();
          });
          const subscribed = new Promise((res) => sub.once('subscribed', res));
          sub.subscribe();
          await withTimeout(server.watch(subscribed), 10000, `'subscribed' on ${channel}`);
        };
        for (let start = 0; start < CLIENTS; start += CONNECT_BATCH) {
          const batch = [];
          for (let k = start; k < Math.min(start + CONNECT_BATCH, CLIENTS); k++) batch.push(subscribeOne());
          await Promise.all(batch);
        }

        // The burst: each publish is acknowledged by the hub before the next is sent, so
        // offsets are 1..N in publication order, but nobody waits for delivery.
        for (let i = 1; i <= PUBLICATIONS; i++) {
          const reply = await adminPublish(server, channel, { i });
          assert.ok(!reply.error, `publish ${i}: ${safeJson(reply)}`);
        }

        const complete = () => received.filter((got) => got.length >= PUBLICATIONS).length;
        await withTimeout(server.watch(Promise.all(done)), DELIVERY_TIMEOUT_MS,
          () => `all ${CLIENTS} clients to receive ${PUBLICATIONS} publications (complete: ${complete()})`);

        const expected = Array.from({ length: PUBLICATIONS }, (_, k) => ({ offset: k + 1, i: k + 1 }));
        let outOfOrder = 0;
        let firstBad = null;
        for (const got of received) {
          try {
            assert.deepStrictEqual(got, expected);
          } catch {
            outOfOrder += 1;
            firstBad ??= got;
          }
        }
        assert.equal(outOfOrder, 0,
          `${outOfOrder} of ${CLIENTS} clients saw publications out of order or duplicated; first: ${safeJson(firstBad)}`);
      });
  });
}
