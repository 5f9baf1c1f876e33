package io.freshrec.flink;

import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.types.Row;

/**
 * Lets a Python keyed operator work on several shards of its subtask in one call (thread mode):
 * sets the keyed state backend's current key, which state and timers use, to a shard's key.
 * The key is built as PyFlink's {@code KeyByKeySelector} builds it: a one-field Row holding
 * the Integer key. Reached through pemja, so it lives in this jar on the JVM classpath.
 */
public final class ShardKeySwitch {
    private ShardKeySwitch() {
    }

    @SuppressWarnings("unchecked")
    public static void setCurrentKey(Object backend, int key) {
        Row row = new Row(1);
        row.setField(0, key);
        ((KeyedStateBackend<Row>) backend).setCurrentKey(row);
    }
}
