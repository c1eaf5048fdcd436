// Real npm `centrifuge` SDK, JSON build, over WebSocket against the sidewire binary.
import { Centrifuge } from 'centrifuge';
import { defineWebsocketSuite, jsonCodec } from './websocket-suite.mjs';

defineWebsocketSuite('centrifuge-js websocket json', Centrifuge, jsonCodec);
