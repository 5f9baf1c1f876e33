package io.freshrec.flink;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Iterator;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;

/**
 * An item-embedding v1 changelog record (JSON) in the replica's stored layout {@code FR1}
 * ({@code flink_jobs/replica_value.py}), so that user-update's Python neither parses the JSON
 * nor packs the value: parsing and packing a record's ~100 neighbours cost ~50 us of the
 * interpreter's time per record, and every replica reads every record. A record that is not
 * exactly what the layout holds (any unknown field, type or value) is left as it is, and the
 * Python side parses it, or names what is wrong with it, as before.
 */
public final class ItemEmbeddingPacker {
    private static final byte[] MAGIC = {'F', 'R', '1'};
    private static final int AVAILABLE = 1, TREND = 2, PRICE = 4, CATEGORY = 8, BRAND = 16,
            TITLE = 32;
    private static final int HEAD = 3 + 1 + 4 + 4 + 8 + 8 + 4 * 8 + 5 * 4;

    // Python writes each double's shortest repr, mostly 16-17 digits, which the JDK's parser
    // takes through its slow big-integer path; FastDoubleParser (bundled with Flink's Jackson)
    // gives the same correctly rounded doubles.
    private final ObjectMapper json = new ObjectMapper(
            JsonFactory.builder().enable(StreamReadFeature.USE_FAST_DOUBLE_PARSER).build());

    /** The FR1 value of a record, or null when the record is not packed. */
    public byte[] pack(byte[] value) {
        if (value == null) {
            return null;
        }
        try {
            return packDocument(json.readTree(value));
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    private static byte[] packDocument(JsonNode doc) {
        if (doc == null || !doc.isObject()) {
            return null;
        }
        for (Iterator<String> it = doc.fieldNames(); it.hasNext(); ) {
            switch (it.next()) {
                case "schema_version": case "item_id": case "vector": case "acc": case "bias":
                case "trend": case "n_events": case "updated_at": case "category":
                case "brand": case "title": case "price": case "available": case "neighbours":
                    break;
                default:
                    return null;
            }
        }
        JsonNode version = doc.get("schema_version");
        JsonNode itemId = doc.get("item_id");
        JsonNode vector = doc.get("vector");
        JsonNode bias = doc.get("bias");
        JsonNode trend = doc.get("trend");
        JsonNode nEvents = doc.get("n_events");
        JsonNode updatedAt = doc.get("updated_at");
        JsonNode available = doc.get("available");
        JsonNode acc = doc.get("acc");
        JsonNode price = doc.get("price");
        JsonNode neighbours = doc.get("neighbours");
        if (version == null || !version.isIntegralNumber() || version.asLong() != 1
                || itemId == null || !itemId.isTextual() || vector == null || !vector.isArray()
                || bias == null || !bias.isNumber() || trend == null
                || !(trend.isNumber() || trend.isNull()) || nEvents == null
                || !nEvents.isIntegralNumber() || !nEvents.canConvertToLong()
                || updatedAt == null || !updatedAt.isIntegralNumber()
                || !updatedAt.canConvertToLong() || available == null || !available.isBoolean()
                || (acc != null && !acc.isNumber())
                || (price != null && !(price.isNumber() || price.isNull()))
                || (neighbours != null && !neighbours.isArray())) {
            return null;
        }
        byte[] category = text(doc.get("category"));
        byte[] brand = text(doc.get("brand"));
        byte[] title = text(doc.get("title"));
        if (category == BAD || brand == BAD || title == BAD) {
            return null;
        }
        int dim = vector.size();
        int n = neighbours == null ? 0 : neighbours.size();
        StringBuilder ids = new StringBuilder();
        double[] weights = new double[n];
        for (int j = 0; j < n; j++) {
            JsonNode pair = neighbours.get(j);
            if (!pair.isArray() || pair.size() != 2 || !pair.get(0).isTextual()
                    || !pair.get(1).isNumber()) {
                return null;
            }
            String id = pair.get(0).asText();
            if (id.indexOf('\0') >= 0) {
                return null;
            }
            if (j > 0) {
                ids.append('\0');
            }
            ids.append(id);
            weights[j] = pair.get(1).asDouble();
        }
        byte[] idBytes = itemId.asText().getBytes(StandardCharsets.UTF_8);
        byte[] neighbourIds = ids.toString().getBytes(StandardCharsets.UTF_8);
        int flags = (available.asBoolean() ? AVAILABLE : 0) | (trend.isNull() ? 0 : TREND)
                | (price == null || price.isNull() ? 0 : PRICE)
                | (category == null ? 0 : CATEGORY) | (brand == null ? 0 : BRAND)
                | (title == null ? 0 : TITLE);
        ByteBuffer out = ByteBuffer.allocate(HEAD + 4 * dim + 8 * n + idBytes.length
                + length(category) + length(brand) + length(title) + neighbourIds.length)
                .order(ByteOrder.LITTLE_ENDIAN);
        out.put(MAGIC).put((byte) flags).putInt(dim).putInt(n)
                .putLong(nEvents.asLong()).putLong(updatedAt.asLong())
                .putDouble(bias.asDouble()).putDouble(trend.isNull() ? 0.0 : trend.asDouble())
                .putDouble(acc == null ? 0.0 : acc.asDouble())
                .putDouble(price == null || price.isNull() ? 0.0 : price.asDouble())
                .putInt(idBytes.length).putInt(length(category)).putInt(length(brand))
                .putInt(length(title)).putInt(neighbourIds.length);
        for (int i = 0; i < dim; i++) {
            JsonNode x = vector.get(i);
            if (!x.isNumber()) {
                return null;
            }
            out.putFloat((float) x.asDouble());
        }
        for (double w : weights) {
            out.putDouble(w);
        }
        out.put(idBytes);
        for (byte[] t : new byte[][] {category, brand, title}) {
            if (t != null) {
                out.put(t);
            }
        }
        out.put(neighbourIds);
        return out.array();
    }

    private static final byte[] BAD = new byte[0];

    /** A nullable string field as UTF-8 (null when absent or null, BAD when not a string). */
    private static byte[] text(JsonNode node) {
        if (node == null || node.isNull()) {
            return null;
        }
        return node.isTextual() ? node.asText().getBytes(StandardCharsets.UTF_8) : BAD;
    }

    private static int length(byte[] b) {
        return b == null ? 0 : b.length;
    }
}
