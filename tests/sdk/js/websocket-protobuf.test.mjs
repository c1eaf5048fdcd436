// Real npm `centrifuge` SDK, protobuf build, pinned to the websocket transport, against the sidewire binary.
// Subprotocol centrifuge-protobuf; payloads are Uint8Array.
import { Centrifuge } from 'centrifuge/build/protobuf';
import { defineTransportSuite, protobufCodec } from './suite.mjs';

defineTransportSuite('centrifuge-js websocket protobuf', Centrifuge, protobufCodec, 'websocket');
