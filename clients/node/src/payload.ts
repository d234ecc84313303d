import { Buffer } from "node:buffer";

export const JSON_CONTENT_TYPE = "application/json";
export const BYTES_CONTENT_TYPE = "application/octet-stream";

/** True for "application/json", with or without parameters ("; charset=utf-8"). */
export function isJsonContentType(contentType: string): boolean {
  const mime = contentType.split(";", 1)[0]!.trim().toLowerCase();
  return mime === JSON_CONTENT_TYPE;
}

/**
 * How a value goes on the wire: a Buffer / Uint8Array as-is with
 * "application/octet-stream" (or the `contentType` given); anything else as
 * JSON with "application/json".
 */
export function encodePayload(data: unknown, contentType?: string): { payload: Buffer; contentType: string } {
  if (data instanceof Uint8Array) {
    const payload = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    return { payload, contentType: contentType || BYTES_CONTENT_TYPE };
  }
  if (contentType && !isJsonContentType(contentType)) {
    throw new TypeError(
      `leanmq-grpc: content type ${JSON.stringify(contentType)} needs a Buffer/Uint8Array payload; other values are sent as JSON`,
    );
  }
  const text = JSON.stringify(data);
  if (text === undefined) {
    throw new TypeError(`leanmq-grpc: cannot send ${typeof data} as JSON`);
  }
  return { payload: Buffer.from(text, "utf8"), contentType: contentType || JSON_CONTENT_TYPE };
}

/** The handler's view of a payload: parsed JSON for application/json, else the bytes. */
export function decodePayload(payload: Buffer, contentType: string): unknown {
  if (isJsonContentType(contentType)) {
    return JSON.parse(payload.toString("utf8"));
  }
  return payload;
}
