// Real npm `centrifuge` SDK, Protobuf build (subprotocol centrifuge-protobuf),
// over WebSocket against the sidewire binary. Payloads are Uint8Array.
import { Centrifuge as CentrifugePb } from 'centrifuge/build/protobuf';
import { defineWebsocketSuite, protobufCodec } from './websocket-suite.mjs';

defineWebsocketSuite('centrifuge-js websocket protobuf', CentrifugePb, protobufCodec);
