// Real npm `centrifuge` SDK, json build, pinned to the sse transport, against the sidewire binary.
// Stream: GET /connection/sse?cf_connect=... (one reply per data: event); commands: POST /emulation.
// SSE is JSON-only, so there is no protobuf variant.
import { Centrifuge } from 'centrifuge';
import { defineTransportSuite, jsonCodec } from './suite.mjs';

defineTransportSuite('centrifuge-js sse json', Centrifuge, jsonCodec, 'sse');
