// Real npm `centrifuge` SDK, json build, pinned to the http_stream transport, against the sidewire binary.
// Stream: POST /connection/http_stream (newline-delimited JSON replies); commands: POST /emulation.
import { Centrifuge } from 'centrifuge';
import { defineTransportSuite, jsonCodec } from './suite.mjs';

defineTransportSuite('centrifuge-js http_stream json', Centrifuge, jsonCodec, 'http_stream');
