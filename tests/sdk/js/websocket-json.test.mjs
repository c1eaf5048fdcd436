// Real npm `centrifuge` SDK, json build, pinned to the websocket transport, against the sidewire binary.
import { Centrifuge } from 'centrifuge';
import { defineTransportSuite, jsonCodec } from './suite.mjs';

defineTransportSuite('centrifuge-js websocket json', Centrifuge, jsonCodec, 'websocket');
