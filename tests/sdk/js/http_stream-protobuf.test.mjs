// Real npm `centrifuge` SDK, protobuf build, pinned to the http_stream transport, against the sidewire binary.
// Stream: POST /connection/http_stream (varint-delimited Replies); commands: POST /emulation
// (EmulationRequest). Payloads are Uint8Array.
import { Centrifuge } from 'centrifuge/build/protobuf';
import { defineTransportSuite, protobufCodec } from './suite.mjs';

defineTransportSuite('centrifuge-js http_stream protobuf', Centrifuge, protobufCodec, 'http_stream');
